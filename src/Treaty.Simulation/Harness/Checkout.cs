using System.Globalization;
using Treaty.AspNetCore.Idempotency;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>One row of the kit's idempotency table in the Order participant's database.</summary>
internal sealed class IdempotencyRow(string fingerprint, string owner, DateTimeOffset lockedUntil, DateTimeOffset expiresAt)
{
    public string Fingerprint { get; } = fingerprint;

    /// <summary>The claim that holds the key; a take-over replaces it, so the old claim cannot complete.</summary>
    public string Owner { get; } = owner;

    public DateTimeOffset LockedUntil { get; } = lockedUntil;

    public DateTimeOffset ExpiresAt { get; } = expiresAt;

    /// <summary>The stored response, once the handler's run committed; null while in flight.</summary>
    public CheckoutReply? Response { get; set; }

    public IdempotencyRecordState State => new(Fingerprint, Response is not null, LockedUntil, ExpiresAt);
}

/// <summary>An answer of <c>POST /checkout</c>; status 0 is a refused connection.</summary>
internal readonly record struct CheckoutReply(int Status, string Body, string? OrderId = null)
{
    public bool IsSuccess => Status is >= 200 and < 300;
}

/// <summary>What the checkout path did in a run (for the sweep's coverage line).</summary>
internal sealed record CheckoutStats(int Requests, int HandlerRuns, int Replays, int InFlight, int TakeOvers, int Released, int ClaimsLost, int Mismatches, int CrashesInCheckout);

/// <summary>
/// The Shop's checkout path as the participant kit runs it: clients send <c>POST /checkout</c> with
/// an <c>Idempotency-Key</c> to the Order participant, which decides with the kit's own
/// <see cref="IdempotencyRules"/> (Run, Replay, Mismatch, InFlight, TakeOver), claims the key in a
/// short transaction of its own, runs the handler (places the order and submits its transaction —
/// a saga, tcc, 2pc or 3pc — to the coordinator) and stores the response in the handler's transaction together with its writes, on
/// the condition that its claim still holds; a 5xx releases the key and rolls the writes back.
/// Requests and answers travel on the simulated wire (lost, duplicated, delayed), clients retry
/// with the same key (sometimes several at once), and the Order participant may crash between the
/// claim and the commit, leaving an in-flight record whose lock a retry takes over once it expires.
/// </summary>
internal sealed class CheckoutDesk
{
    private static readonly TimeSpan KeyLifetime = TimeSpan.FromHours(24);
    private static readonly TimeSpan ClientTimeout = TimeSpan.FromMilliseconds(1_500);

    private readonly SimScheduler _scheduler;
    private readonly SimTimeProvider _time;
    private readonly FaultPlan _faults;
    private readonly Random _random;
    private readonly SimNetwork _network;
    private readonly ParticipantHost _host;
    private readonly OrderService _orders;
    private readonly SimNode _client;
    private readonly SimNode _control;
    private readonly Func<(SimNode Node, TransactionEngine Engine)> _coordinator;
    private readonly Func<string, string, TransactionSpec> _specFor;
    private readonly Action<Func<Task>> _spawn;
    private readonly List<string> _violations;
    private readonly bool _freshGidPerRun;
    private readonly Dictionary<string, Key> _keys = new(StringComparer.Ordinal);
    private readonly List<Key> _ordered = [];
    private readonly List<Work> _work = [];
    private int _owners;
    private int _requests;
    private int _runs;
    private int _replays;
    private int _inFlight;
    private int _takeOvers;
    private int _released;
    private int _claimsLost;
    private int _mismatches;
    private int _crashes;

    public CheckoutDesk(
        SimScheduler scheduler,
        SimTimeProvider time,
        FaultPlan faults,
        Random random,
        SimNetwork network,
        ParticipantHost orderHost,
        SimNode client,
        SimNode control,
        Func<(SimNode Node, TransactionEngine Engine)> coordinator,
        Func<string, string, TransactionSpec> specFor,
        Action<Func<Task>> spawn,
        List<string> violations,
        bool freshGidPerRun)
    {
        _scheduler = scheduler;
        _time = time;
        _faults = faults;
        _random = random;
        _network = network;
        _host = orderHost;
        _orders = (OrderService)orderHost.Service;
        _client = client;
        _control = control;
        _coordinator = coordinator;
        _specFor = specFor;
        _spawn = spawn;
        _violations = violations;
        _freshGidPerRun = freshGidPerRun;
        // The kit's default is 60 s; shorter locks make take-overs (and a lock that expires under a
        // slow request, whose completion must then lose) happen within a run.
        LockTimeout = TimeSpan.FromMilliseconds(_random.Next(4) switch
        {
            0 => 100 + _random.Next(900), // often shorter than a slow handler: a retry takes over a live claim
            1 => 300 + _random.Next(3_000),
            _ => 1_000 + _random.Next(19_000),
        });
        // how long the handler waits for the coordinator: longer than the client's own timeout in
        // most seeds, so the client's retry meets the claim still held (or expired: a take-over)
        SubmitTimeout = TimeSpan.FromMilliseconds(500 + _random.Next(4_500));
        CrashInCheckout = _random.Next(2) == 0 ? 0 : _random.NextDouble() * 0.3;
        ProbeRate = _random.NextDouble() * 0.5;
    }

    public TimeSpan LockTimeout { get; }

    public TimeSpan SubmitTimeout { get; }

    /// <summary>The chance that the Order participant crashes in the middle of a checkout (after the claim, or before the commit).</summary>
    public double CrashInCheckout { get; }

    /// <summary>The chance that, once a key got its answer, someone reuses it for a different checkout.</summary>
    public double ProbeRate { get; }

    /// <summary>Every key got a 2xx.</summary>
    public bool AllAnswered => _ordered.TrueForAll(k => k.OrderIds.Count > 0);

    /// <summary>A handler still running in a live Order participant, or a submit still running in a live coordinator.</summary>
    public bool Busy
    {
        get
        {
            _work.RemoveAll(w => w.Done || !w.Node.Alive);
            return _work.Count > 0;
        }
    }

    public CheckoutStats Stats => new(_requests, _runs, _replays, _inFlight, _takeOvers, _released, _claimsLost, _mismatches, _crashes);

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"lock={LockTimeout.TotalSeconds:0.0}s submitTimeout={SubmitTimeout.TotalSeconds:0.0}s crashInCheckout={CrashInCheckout:0.00} probe={ProbeRate:0.00}");

    /// <summary>A client starts checkout <paramref name="key"/> at <paramref name="at"/>; its transaction will be <paramref name="gid"/>.</summary>
    public void Start(string key, string fingerprint, string gid, TimeSpan at, string description)
    {
        var k = new Key(key, fingerprint, gid);
        _keys[key] = k;
        _ordered.Add(k);
        // Sometimes the client fires the same request more than once at the same moment (a double
        // click, two tabs, an eager retry library).
        var chains = _random.Next(4) == 0 ? 2 + _random.Next(2) : 1;
        _scheduler.At(_client, at, () =>
        {
            Trace(_client, $"checkout {key}{(chains > 1 ? $" x{chains} at once" : "")}: {description}");
            for (var chain = 0; chain < chains; chain++)
            {
                Attempt(k, 0);
            }
        });
    }

    /// <summary>The invariants of the checkout path.</summary>
    public void Check(Func<string, TransactionState?> stored, Func<string, bool> charged)
    {
        foreach (var k in _ordered)
        {
            var ids = k.OrderIds.Distinct(StringComparer.Ordinal).ToList();
            if (ids.Count == 0)
            {
                _violations.Add($"checkout {k.Name}: liveness — the client never got a 2xx although it kept retrying");
            }
            else if (ids.Count > 1)
            {
                _violations.Add($"checkout {k.Name}: clients got 2xx answers naming different orders ({string.Join(", ", ids)})");
            }

            var placed = _orders.Placed.Where(p => p.Value == k.Name).Select(p => p.Key).ToList();
            if (placed.Count > 1 || (ids.Count > 0 && (placed.Count != 1 || placed[0] != ids[0])))
            {
                _violations.Add($"checkout {k.Name}: placed orders [{string.Join(", ", placed)}], answered [{string.Join(", ", ids)}]");
            }

            var sagas = k.Gids.Where(g => stored(g) is not null).ToList();
            if (sagas.Count > 1)
            {
                _violations.Add($"checkout {k.Name}: {sagas.Count} transactions for one key ({string.Join(", ", sagas)})");
            }

            foreach (var id in ids.Where(id => stored(id) is null))
            {
                _violations.Add($"checkout {k.Name}: answered 2xx with order {id}, whose transaction was never stored");
            }

            var times = k.Gids.Count(charged);
            if (times > 1)
            {
                _violations.Add($"checkout {k.Name}: charged {times} times for one key");
            }

            if (k.ProbeAnswered)
            {
                _violations.Add($"checkout {k.Name}: a different request reusing the key got a 2xx");
            }
        }
    }

    // ---- the client ----

    private void Attempt(Key k, int tries)
    {
        if (k.OrderIds.Count > 0)
        {
            return;
        }

        var id = $"{k.Name}#{(++k.Attempts).ToString(CultureInfo.InvariantCulture)}";
        var settled = false;
        ITimer? timer = null;
        void Next(TimeSpan after)
        {
            if (settled)
            {
                return;
            }

            settled = true;
            timer!.Dispose();
            _scheduler.At(_client, after, () => Attempt(k, tries + 1));
        }

        timer = _time.CreateTimer(_ =>
        {
            Trace(_client, $"{id} no answer after {ClientTimeout.TotalMilliseconds:0}ms");
            Next(Backoff(tries));
        }, null, ClientTimeout, Timeout.InfiniteTimeSpan);
        Send(id, k.Name, k.Fingerprint, reply =>
        {
            if (settled)
            {
                Trace(_client, $"{id} late answer {reply.Status.ToString(CultureInfo.InvariantCulture)} ignored");
                return;
            }

            Trace(_client, $"{id} answer {reply.Status.ToString(CultureInfo.InvariantCulture)} {reply.Body}");
            if (reply.IsSuccess)
            {
                settled = true;
                timer.Dispose();
                var first = k.OrderIds.Count == 0;
                k.OrderIds.Add(reply.OrderId ?? "(none)");
                if (first && _random.NextDouble() < ProbeRate)
                {
                    Probe(k);
                }

                return;
            }

            switch (reply.Status)
            {
                case 0 or 500 or 503:
                    Next(Backoff(tries));
                    break;
                case 409 when reply.Body.Contains(IdempotencyProblemTypes.KeyInFlight, StringComparison.Ordinal):
                    // Retry-After is an upper bound: the client may come back sooner.
                    var retryAfter = TimeSpan.FromSeconds(int.Parse(reply.Body[(reply.Body.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
                    Next(TimeSpan.FromTicks(Math.Min(retryAfter.Ticks, Backoff(tries).Ticks)));
                    break;
                default:
                    _violations.Add($"checkout {id}: unexpected answer {reply.Status.ToString(CultureInfo.InvariantCulture)} {reply.Body}");
                    settled = true;
                    timer.Dispose();
                    break;
            }
        });
    }

    /// <summary>Someone reuses an answered key for a different checkout: the answer must be 409 mismatch.</summary>
    private void Probe(Key k)
    {
        _scheduler.At(_client, TimeSpan.FromMilliseconds(_random.Next(2_000)), () =>
        {
            var id = $"{k.Name}#probe";
            Trace(_client, $"{id}: the same key for a different checkout");
            Send(id, k.Name, k.Fingerprint + "-other", reply =>
            {
                Trace(_client, $"{id} answer {reply.Status.ToString(CultureInfo.InvariantCulture)} {reply.Body}");
                if (reply.IsSuccess)
                {
                    k.ProbeAnswered = true;
                }
                else if (reply.Status == 409 && !reply.Body.Contains(IdempotencyProblemTypes.KeyMismatch, StringComparison.Ordinal))
                {
                    _violations.Add($"checkout {id}: a reused key was answered {reply.Body}, not a mismatch");
                }
            });
        });
    }

    /// <summary>Exponential backoff with jitter: about 0.1 s, 0.2 s, 0.4 s... up to about 4 s.</summary>
    private TimeSpan Backoff(int tries) =>
        TimeSpan.FromMilliseconds((100 << Math.Min(tries, 5)) * (0.5 + _random.NextDouble()));

    /// <summary>A request from the client to the Order participant and its answer back, over the faulty wire.</summary>
    private void Send(string id, string key, string fingerprint, Action<CheckoutReply> onReply)
    {
        _requests++;
        if (_faults.Active && _random.NextDouble() < _faults.DropRequest)
        {
            Trace(_client, $"{id} request DROPPED");
            return;
        }

        var copies = _faults.Active && _random.NextDouble() < _faults.Duplicate ? 2 : 1;
        for (var copy = 0; copy < copies; copy++)
        {
            if (copy == 1)
            {
                Trace(_client, $"{id} request DUPLICATED");
            }

            _network.Deliver(_network.Wire, Latency(), () =>
            {
                void Answer(CheckoutReply reply)
                {
                    if (_faults.Active && _random.NextDouble() < _faults.DropReply)
                    {
                        Trace(_network.Wire, $"{id} reply DROPPED");
                        return;
                    }

                    _network.Deliver(_client, Latency(), () => onReply(reply));
                }

                if (!_host.Up)
                {
                    Trace(_network.Wire, $"{id} refused: order is down");
                    Answer(new CheckoutReply(0, "connection refused"));
                    return;
                }

                var node = _host.Node;
                _scheduler.At(node, TimeSpan.FromMicroseconds(_random.Next(2_000)), () => Claim(node, id, key, fingerprint, Answer));
            });
        }
    }

    private TimeSpan Latency()
    {
        var latency = TimeSpan.FromMicroseconds(500 + _random.Next(20_000));
        if (_faults.Active && _random.NextDouble() < _faults.Delay)
        {
            latency += TimeSpan.FromMilliseconds(50 + _random.Next(3_000));
        }

        return latency;
    }

    // ---- the Order participant: the kit's idempotency middleware around the checkout handler ----

    /// <summary>The claim, in one short local transaction of its own (one event).</summary>
    private void Claim(SimNode node, string id, string key, string fingerprint, Action<CheckoutReply> answer)
    {
        var now = _time.GetUtcNow();
        _orders.IdempotencyKeys.TryGetValue(key, out var row);
        var decision = IdempotencyRules.Decide(row?.State, fingerprint, now);
        switch (decision.Action)
        {
            case IdempotencyAction.Replay:
                _replays++;
                Trace(node, $"{id} checkout: stored response replayed");
                answer(row!.Response!.Value);
                return;
            case IdempotencyAction.Mismatch:
                _mismatches++;
                Trace(node, $"{id} checkout: key reused for a different request -> 409");
                answer(new CheckoutReply(409, IdempotencyProblemTypes.KeyMismatch));
                return;
            case IdempotencyAction.InFlight:
                _inFlight++;
                Trace(node, $"{id} checkout: in flight -> 409, Retry-After {decision.RetryAfter.TotalSeconds:0}");
                answer(InFlight(decision.RetryAfter));
                return;
        }

        var (lockedUntil, expiresAt) = IdempotencyRules.Claim(now, LockTimeout, KeyLifetime);
        var owner = $"o{(++_owners).ToString(CultureInfo.InvariantCulture)}";
        _orders.IdempotencyKeys[key] = new IdempotencyRow(fingerprint, owner, lockedUntil, expiresAt);
        if (decision.Action == IdempotencyAction.TakeOver)
        {
            _takeOvers++;
        }

        Trace(node, $"{id} checkout: {(decision.Action == IdempotencyAction.TakeOver ? $"lock of {row!.Owner} expired, taken over" : "key claimed")} by {owner}");
        if (MaybeCrash(node, "after the claim"))
        {
            return;
        }

        RunHandler(node, id, _keys[key], owner, answer);
    }

    /// <summary>The handler: places the order (staged in its transaction) and submits its transaction (saga, tcc, 2pc or 3pc).</summary>
    private void RunHandler(SimNode node, string id, Key k, string owner, Action<CheckoutReply> answer)
    {
        _runs++;
        var run = ++k.Runs;
        // The order id, and so the gid, is derived from the key: a run that takes over a crashed
        // one submits the same saga again, and the coordinator's submit is idempotent on the gid.
        var gid = _freshGidPerRun && run > 1 ? $"{k.Gid}.{run.ToString(CultureInfo.InvariantCulture)}" : k.Gid;
        if (!k.Gids.Contains(gid))
        {
            k.Gids.Add(gid);
        }

        var spec = _specFor(k.Gid, gid);
        var work = new Work(node);
        _work.Add(work);
        ITimer? timer = null;
        void Finish(CheckoutReply reply, string why)
        {
            if (work.Done)
            {
                return;
            }

            work.Done = true;
            timer!.Dispose();
            Trace(node, $"{id} checkout handler of {owner}: {why} -> {reply.Status.ToString(CultureInfo.InvariantCulture)}");
            if (!MaybeCrash(node, "before the commit"))
            {
                Complete(node, id, k.Name, owner, gid, reply, answer);
            }
        }

        timer = _time.CreateTimer(_ => Finish(new CheckoutReply(503, "coordinator did not answer"), "submit timed out"), null, SubmitTimeout, Timeout.InfiniteTimeSpan);
        void Back(CheckoutReply reply, string why)
        {
            if (_faults.Active && _random.NextDouble() < _faults.DropReply)
            {
                Trace(_network.Wire, $"{id} submit reply DROPPED");
                return;
            }

            if (_network.IsCut(_host.Service.Name))
            {
                Trace(_network.Wire, $"{id} submit reply LOST (partition)");
                return;
            }

            _network.Deliver(node, Latency(), () => Finish(reply, why));
        }

        if (_faults.Active && _random.NextDouble() < _faults.DropRequest)
        {
            Trace(node, $"{id} submit {gid} request DROPPED");
            return;
        }

        if (_network.IsCut(_host.Service.Name))
        {
            Trace(node, $"{id} submit {gid} request LOST (partition)");
            return;
        }

        _network.Deliver(_network.Wire, Latency(), () =>
        {
            var (coordinator, engine) = _coordinator();
            if (!coordinator.Alive)
            {
                Back(new CheckoutReply(503, "coordinator unreachable"), "coordinator refused the connection");
                return;
            }

            var submit = new Work(coordinator);
            _work.Add(submit);
            _scheduler.At(coordinator, TimeSpan.FromMilliseconds(1), () => _spawn(async () =>
            {
                SubmitResult result;
                try
                {
                    result = await engine.SubmitAsync(spec, "fp-" + gid, CancellationToken.None);
                }
                catch (IOException ex)
                {
                    submit.Done = true;
                    Back(new CheckoutReply(503, "coordinator failed: " + ex.Message), "submit failed");
                    return;
                }

                submit.Done = true;
                if (result.Status == SubmitStatus.Conflict)
                {
                    _violations.Add($"submit {gid}: conflict with its own definition");
                }

                Back(new CheckoutReply(202, $$"""{"orderId":"{{gid}}","status":"PROCESSING"}""", gid), $"{spec.Protocol.ToWire()} {gid} {result.Status}");
            }));
        });
    }

    /// <summary>The handler's commit: the stored response and the placed order together, if the claim still holds.</summary>
    private void Complete(SimNode node, string id, string key, string owner, string gid, CheckoutReply reply, Action<CheckoutReply> answer)
    {
        _orders.IdempotencyKeys.TryGetValue(key, out var row);
        if (IdempotencyRules.Classify(reply.Status) == ResponseDisposition.Release)
        {
            // rolled back with the handler's writes; the key is freed so that a retry runs again
            if (row is { Response: null } && row.Owner == owner)
            {
                _orders.IdempotencyKeys.Remove(key);
            }

            _released++;
            Trace(node, $"{id} checkout: {reply.Status.ToString(CultureInfo.InvariantCulture)}, writes rolled back, key released");
            answer(reply);
            return;
        }

        if (row is null || row.Owner != owner || row.Response is not null)
        {
            // the lock expired and another request took the key over: roll back, answer as the kit does
            _claimsLost++;
            var now = _time.GetUtcNow();
            Trace(node, $"{id} checkout: claim of {owner} lost to {row?.Owner ?? "nobody"}, writes rolled back");
            answer(row?.Response is { } winner && row.ExpiresAt > now
                ? winner
                : InFlight(IdempotencyRules.RetryAfter(row?.LockedUntil ?? now, now)));
            return;
        }

        row.Response = reply;
        if (reply.IsSuccess)
        {
            if (!_orders.Placed.TryAdd(gid, key))
            {
                _violations.Add($"checkout {key}: order {gid} placed twice");
            }
        }

        Trace(node, $"{id} checkout: committed order {gid} with the stored response");
        answer(reply);
    }

    private static CheckoutReply InFlight(TimeSpan retryAfter) =>
        new(409, $"{IdempotencyProblemTypes.KeyInFlight} Retry-After {((long)retryAfter.TotalSeconds).ToString(CultureInfo.InvariantCulture)}");

    /// <summary>The Order participant crashes in the middle of a checkout: the claim stays, staged writes are lost.</summary>
    private bool MaybeCrash(SimNode node, string where)
    {
        if (!_faults.Active || CrashInCheckout == 0 || _random.NextDouble() >= CrashInCheckout || !node.Alive || _host.Node != node)
        {
            return false;
        }

        _crashes++;
        _host.Crash();
        Trace(node, $"CRASH (participant) in a checkout, {where}");
        _scheduler.At(_control, TimeSpan.FromMilliseconds(10 + _random.Next(2_000)), _host.Restart);
        return true;
    }

    private void Trace(SimNode node, string text) => _scheduler.Trace.Add(_scheduler, node.Name, text);

    private sealed class Key(string name, string fingerprint, string gid)
    {
        public string Name { get; } = name;

        public string Fingerprint { get; } = fingerprint;

        /// <summary>The gid derived from the key.</summary>
        public string Gid { get; } = gid;

        /// <summary>Every gid a handler run of this key submitted (one, unless a variant mints them per run).</summary>
        public List<string> Gids { get; } = [];

        /// <summary>The order ids of every 2xx a client got for this key.</summary>
        public List<string> OrderIds { get; } = [];

        public int Attempts { get; set; }

        public int Runs { get; set; }

        public bool ProbeAnswered { get; set; }
    }

    private sealed class Work(SimNode node)
    {
        public SimNode Node { get; } = node;

        public bool Done { get; set; }
    }
}
