using System.Globalization;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>The fault rates of one run (picked from its seed); <see cref="Active"/> is false once the fault phase ends.</summary>
internal sealed class FaultPlan
{
    public bool Active { get; set; } = true;

    public double DropRequest { get; init; }

    public double DropReply { get; init; }

    public double Duplicate { get; init; }

    public double Delay { get; init; }

    /// <summary>A participant answers 500, 502, 503, 504 or 429 without doing anything (overloaded, a proxy, a crash before its commit).</summary>
    public double ErrorBefore { get; init; }

    /// <summary>A participant answers 500, 502, 503 or 504 after its local transaction committed (a proxy timing out, a crash while answering).</summary>
    public double ErrorAfter { get; init; }

    /// <summary>A participant is slow (a GC pause, a lock wait): it applies the call 0.05 to 2 s late, often after the caller gave up.</summary>
    public double Slow { get; init; }

    public double CrashAtWrite { get; init; }

    public double WriteError { get; init; }

    /// <summary>
    /// BUGGIFY: the chance that a write that carries a decision (a submit, a vote, committing,
    /// aborting, a final status, an attempt of a final op or a compensation) is hit by a crash just
    /// before or just after it became durable, or fails ambiguously; 0 in most seeds.
    /// </summary>
    public double FocusOnDecisions { get; init; }

    /// <summary>The chance that a timer fires early or late (for the whole run: real timers are never exact).</summary>
    public double TimerSkew { get; init; }

    /// <summary>A restarted participant answers 503 for this long (it is up but not ready yet).</summary>
    public TimeSpan WarmUp { get; init; }

    /// <summary>A participant operation that fails from some moment of the fault phase until the operator lifts it; null in most seeds.</summary>
    public PermanentFault? Permanent { get; init; }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"dropReq={DropRequest:0.00} dropReply={DropReply:0.00} dup={Duplicate:0.00} delay={Delay:0.00} 5xxBefore={ErrorBefore:0.00} 5xxAfter={ErrorAfter:0.00} slow={Slow:0.00} crashAtWrite={CrashAtWrite:0.000} writeError={WriteError:0.000}{(FocusOnDecisions > 0 ? $" focus={FocusOnDecisions:0.00}" : "")} warmUp={WarmUp.TotalMilliseconds:0}ms timerSkew={TimerSkew:0.00}{(Permanent is null ? "" : $" permanent=[{Permanent.Description}]")}");
}

/// <summary>
/// A fault that does not go away by itself: some operations of one participant (for one customer,
/// or all of them) answer 503 from <see cref="Active"/> on, after the fault phase too, until the
/// operator lifts it. A transaction that needs one of them can only end up stuck (a compensation,
/// a final op, a pivot or a queryPrepared is never abandoned) or aborted.
/// </summary>
internal sealed class PermanentFault(string description, string? customer, Func<string, string?, string, bool> covers)
{
    /// <summary>What the participant answers (and so the error the engine records) for every call the fault answers.</summary>
    public const string Error = "unavailable for good (injected permanent fault)";

    public string Description { get; } = description;

    /// <summary>Only this customer's transactions, or everyone's when null.</summary>
    public string? Customer { get; } = customer;

    public bool Active { get; set; }

    /// <summary>Whether the fault could ever answer a call of this transaction to (service, branch, op).</summary>
    public bool Covers(Checkout checkout, string service, string? branch, string op) =>
        (Customer is null || checkout.Customer == Customer) && covers(service, branch, op);
}

/// <summary>A participant cut off from the coordinator, both ways, from <see cref="FromTicks"/> until <see cref="UntilTicks"/>.</summary>
internal sealed record Partition(string Service, long FromTicks, long UntilTicks);

/// <summary>A participant service and its current incarnation. Its tables survive a crash; queued work does not.</summary>
internal sealed class ParticipantHost(SimScheduler scheduler, ShopService service)
{
    private int _incarnation = 1;

    public ShopService Service { get; } = service;

    public SimNode Node { get; private set; } = new(scheduler, $"{service.Name}#1");

    public bool Up => Node.Alive;

    /// <summary>When the current incarnation started (it answers 503 while warming up).</summary>
    public long StartedTicks { get; private set; }

    /// <summary>Called in the new incarnation's node after a restart (the in-doubt resolver re-arms).</summary>
    public Action? Started { get; set; }

    public int Crashes { get; private set; }

    public void Crash()
    {
        Crashes++;
        Node.Kill();
        Service.Crashed();
        scheduler.Trace.Add(scheduler, Node.Name, "CRASH (participant)");
    }

    public void Restart()
    {
        Node = new SimNode(scheduler, $"{Service.Name}#{++_incarnation}");
        StartedTicks = scheduler.NowTicks;
        scheduler.Trace.Add(scheduler, Node.Name, "restart (participant)");
        if (Started is { } started)
        {
            scheduler.At(Node, TimeSpan.Zero, started);
        }
    }
}

/// <summary>What came back over the wire: an HTTP answer, or a transport error (no HTTP answer at all).</summary>
internal readonly record struct WireReply(int Status, string? Body, string? TransportError = null)
{
    public static WireReply Refused(string why) => new(0, null, why);
}

/// <summary>
/// Carries messages between the processes of the world, with random latency and, during the fault
/// phase, lost, duplicated and delayed (reordered) messages; participants answer with HTTP status
/// codes — 500, 502, 503, 504 and 429 before doing anything, and 500, 502, 503, 504 after their
/// local transaction committed — and the 503s of a <see cref="PermanentFault"/> while it lasts. A
/// partition cuts a participant off from the coordinator both ways. An answer goes to the
/// incarnation that asked: if it crashed, the answer is dropped.
/// </summary>
internal sealed class SimNetwork(
    SimScheduler scheduler,
    Random random,
    Random apiRandom,
    FaultPlan faults,
    SimNode wire,
    IReadOnlyDictionary<string, ParticipantHost> hosts,
    IReadOnlyDictionary<string, Checkout> checkouts)
{
    private static readonly int[] CodesBefore = [503, 503, 503, 500, 500, 502, 502, 504, 504, 429];
    private static readonly int[] CodesAfter = [500, 500, 500, 504, 504, 504, 502, 502, 503, 503];
    private readonly List<Partition> _partitions = [];

    public long LastDeliveryTicks { get; private set; }

    /// <summary>The node that carries messages (arrivals run here, then go to whoever is up).</summary>
    public SimNode Wire => wire;

    public int Messages { get; private set; }

    public int ErrorsBefore { get; private set; }

    public int ErrorsAfter { get; private set; }

    public int LostToPartitions { get; private set; }

    public IReadOnlyList<Partition> Partitions => _partitions;

    /// <summary>Checks a call as it arrives at a participant, before its barrier (the order invariants).</summary>
    public Action<string, SimCall>? Arrived { get; set; }

    public void Cut(Partition partition)
    {
        _partitions.Add(partition);
        LastDeliveryTicks = Math.Max(LastDeliveryTicks, partition.UntilTicks);
    }

    /// <summary>Whether <paramref name="service"/> is cut off from the coordinator now.</summary>
    public bool IsCut(string service)
    {
        foreach (var p in _partitions)
        {
            if (p.Service == service && scheduler.NowTicks >= p.FromTicks && scheduler.NowTicks < p.UntilTicks)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A branch call from a coordinator incarnation, with the Idempotency-Key it carries.</summary>
    public void Request(SimNode from, BranchCall call, string key, string id, Action<WireReply> onReply)
    {
        var (service, _) = Parse(call.Url);
        Messages++;
        if (IsCut(service))
        {
            LostToPartitions++;
            Trace(from, $"{id} request LOST (partition)");
            return;
        }

        if (faults.Active && random.NextDouble() < faults.DropRequest)
        {
            Trace(from, $"{id} request DROPPED");
            return;
        }

        var copies = faults.Active && random.NextDouble() < faults.Duplicate ? 2 : 1;
        for (var copy = 0; copy < copies; copy++)
        {
            var latency = Latency();
            if (copy == 1)
            {
                Trace(from, $"{id} request DUPLICATED (+{latency.TotalMilliseconds:0}ms)");
            }

            Schedule(wire, latency, () => Arrive(from, call, key, id, service, onReply));
        }
    }

    private void Arrive(SimNode from, BranchCall call, string key, string id, string service, Action<WireReply> onReply)
    {
        var host = hosts[service];
        if (IsCut(service))
        {
            LostToPartitions++;
            Trace(wire, $"{id} request LOST (partition)");
            return;
        }

        if (!host.Up)
        {
            Trace(wire, $"{id} refused: {service} is down");
            Reply(from, id, service, WireReply.Refused($"connection refused by {service}"), onReply);
            return;
        }

        if (faults.Permanent is { Active: true } permanent && permanent.Covers(checkouts[call.Gid], service, call.Branch, call.Op))
        {
            Trace(host.Node, $"{id} 503 {PermanentFault.Error}");
            Reply(from, id, service, new WireReply(503, PermanentFault.Error), onReply);
            return;
        }

        if (scheduler.NowTicks - host.StartedTicks < faults.WarmUp.Ticks && host.StartedTicks > 0)
        {
            ErrorsBefore++;
            Trace(host.Node, $"{id} 503 starting up");
            Reply(from, id, service, new WireReply(503, "starting up"), onReply);
            return;
        }

        if (faults.Active && random.NextDouble() < faults.ErrorBefore)
        {
            ErrorsBefore++;
            var code = CodesBefore[random.Next(CodesBefore.Length)];
            Trace(host.Node, $"{id} {code.ToString(CultureInfo.InvariantCulture)} before doing anything");
            Reply(from, id, service, new WireReply(code, code == 503 ? """{"title":"Service Unavailable"}""" : "upstream error"), onReply);
            return;
        }

        // Processing takes a moment (sometimes long: the caller may time out while it still
        // applies); a crash meanwhile loses the request with its local transaction.
        var node = host.Node;
        var processing = TimeSpan.FromMicroseconds(random.Next(2_000));
        if (faults.Active && random.NextDouble() < faults.Slow)
        {
            processing += TimeSpan.FromMilliseconds(50 + random.Next(1_950));
        }

        Schedule(node, processing, () =>
        {
            var simCall = new SimCall(call.Gid, call.Branch, call.Op, key);
            Arrived?.Invoke(service, simCall);
            var answer = host.Service.Handle(simCall, out var note);
            var status = answer.Status;
            var body = answer.Body;
            if (faults.Active && random.NextDouble() < faults.ErrorAfter)
            {
                // Committed, but the caller hears an error (the proxy timed out, the process died
                // while answering): a 5xx must never be read as "nothing was applied".
                ErrorsAfter++;
                status = CodesAfter[random.Next(CodesAfter.Length)];
                body = "error after the local transaction committed";
                note += $", then answered {status.ToString(CultureInfo.InvariantCulture)}";
            }

            Trace(node, $"{id} {call.Gid} {call.Branch ?? "tx"}.{call.Op} -> {status.ToString(CultureInfo.InvariantCulture)} {note}");
            Reply(from, id, service, new WireReply(status, body), onReply);
        });
    }

    private void Reply(SimNode to, string id, string service, WireReply reply, Action<WireReply> onReply)
    {
        if (!ReplyLost(id, service))
        {
            Schedule(to, Latency(), () => onReply(reply));
        }
    }

    /// <summary>Whether a reply is lost on its way back: cut by a partition of <paramref name="service"/>, or dropped in the fault phase.</summary>
    private bool ReplyLost(string id, string? service)
    {
        if (service is not null && IsCut(service))
        {
            LostToPartitions++;
            Trace(wire, $"{id} reply LOST (partition)");
            return true;
        }

        if (faults.Active && random.NextDouble() < faults.DropReply)
        {
            Trace(wire, $"{id} reply DROPPED");
            return true;
        }

        return false;
    }

    /// <summary>
    /// A request of another protocol (the coordinator's HTTP API, a participant's) from
    /// <paramref name="from"/> to the node <paramref name="target"/> names at arrival, over the same
    /// faulty wire: <paramref name="serve"/> runs in the target node and answers through its callback;
    /// <paramref name="onReply"/> runs in <paramref name="from"/>. A target that is down refuses
    /// (<paramref name="refused"/>), and so does, during the fault phase, one that answers 503; a
    /// partition of <paramref name="cutService"/> loses it silently.
    /// </summary>
    public void Exchange<T>(SimNode from, string id, string? cutService, Func<SimNode?> target, Action<SimNode, Action<T>> serve, T refused, Action<T> onReply)
    {
        Messages++;
        if (cutService is not null && IsCut(cutService))
        {
            LostToPartitions++;
            Trace(from, $"{id} request LOST (partition)");
            return;
        }

        if (faults.Active && random.NextDouble() < faults.DropRequest)
        {
            Trace(from, $"{id} request DROPPED");
            return;
        }

        Schedule(wire, Latency(), () =>
        {
            void Back(T answer)
            {
                if (!ReplyLost(id, cutService))
                {
                    Schedule(from, Latency(), () => onReply(answer));
                }
            }

            if (cutService is not null && IsCut(cutService))
            {
                LostToPartitions++;
                Trace(wire, $"{id} request LOST (partition)");
                return;
            }

            if (target() is not { Alive: true } node)
            {
                Back(refused);
                return;
            }

            if (faults.Active && apiRandom.NextDouble() < faults.ErrorBefore)
            {
                // The API answers 503 (overloaded, its store busy): no answer as far as the caller is concerned.
                Trace(node, $"{id} 503 before doing anything");
                Back(refused);
                return;
            }

            Schedule(node, TimeSpan.FromMicroseconds(random.Next(1_000)), () => serve(node, Back));
        });
    }

    private TimeSpan Latency()
    {
        var latency = TimeSpan.FromMicroseconds(500 + random.Next(20_000));
        if (faults.Active && random.NextDouble() < faults.Delay)
        {
            latency += TimeSpan.FromMilliseconds(50 + random.Next(3_000));
        }

        return latency;
    }

    /// <summary>Delivers a message of another protocol (the Shop's HTTP API) on the same wire, so quiescence waits for it.</summary>
    public void Deliver(SimNode node, TimeSpan delay, Action action) => Schedule(node, delay, action);

    private void Schedule(SimNode node, TimeSpan delay, Action action)
    {
        LastDeliveryTicks = Math.Max(LastDeliveryTicks, scheduler.NowTicks + delay.Ticks);
        scheduler.At(node, delay, action);
    }

    private void Trace(SimNode node, string text) => scheduler.Trace.Add(scheduler, node.Name, text);

    /// <summary>The service a <c>sim://{service}/{op}</c> URL names, and its op.</summary>
    public static (string Service, string Op) Parse(string url)
    {
        var rest = url["sim://".Length..];
        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        return (rest[..slash], rest[(slash + 1)..]);
    }
}

/// <summary>
/// The engine's <see cref="IBranchInvoker"/> over <see cref="SimNetwork"/>: the first of the answer
/// and the call's own timeout (on the simulated clock) wins; later or duplicated answers are
/// ignored. An HTTP answer is classified by <see cref="BranchOutcome.FromHttp"/>, the function the
/// HTTP invoker uses; only a timeout or a refused connection is unknown by the transport.
/// </summary>
internal sealed class SimBranchInvoker(
    SimScheduler scheduler,
    TimeProvider time,
    SimNetwork network,
    Func<BranchCall, string> keyOf,
    Func<BranchCall, WireReply, BranchOutcome?>? misclassify,
    Action<BranchCall> leaving) : IBranchInvoker
{
    private long _calls;

    public Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken)
    {
        var node = SimNode.Here;
        var id = $"c{(++_calls).ToString(CultureInfo.InvariantCulture)}";
        var done = new TaskCompletionSource<BranchOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.Trace.Add(scheduler, node.Name, $"{id} send {call.Gid} {call.Branch ?? "tx"}.{call.Op}#{call.Attempt.ToString(CultureInfo.InvariantCulture)}");
        leaving(call);
        var timer = time.CreateTimer(_ =>
        {
            if (done.TrySetResult(BranchOutcome.Unknown(null, "timeout")))
            {
                scheduler.Trace.Add(scheduler, node.Name, $"{id} TIMEOUT after {call.Timeout.TotalMilliseconds:0}ms");
            }
        }, null, call.Timeout, Timeout.InfiniteTimeSpan);
        network.Request(node, call, keyOf(call), id, reply =>
        {
            var outcome = reply.TransportError is { } error
                ? BranchOutcome.Unknown(null, error)
                : misclassify?.Invoke(call, reply) ?? BranchOutcome.FromHttp(reply.Status, reply.Body);
            if (done.TrySetResult(outcome))
            {
                timer.Dispose();
                scheduler.Trace.Add(scheduler, node.Name, $"{id} answer {outcome.Kind} {outcome.StatusCode?.ToString(CultureInfo.InvariantCulture) ?? "-"}");
            }
            else
            {
                scheduler.Trace.Add(scheduler, node.Name, $"{id} late answer ignored ({outcome.Kind})");
            }
        });
        return done.Task;
    }
}
