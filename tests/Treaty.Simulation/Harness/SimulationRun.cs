using System.Collections.Immutable;
using System.Globalization;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Simulation.Harness;

/// <summary>What a run should use; the defaults are the correct system.</summary>
internal sealed record SimOptions(
    int Seed,
    bool ActBeforePersist = false,
    bool SkipCompensation = false,
    bool NoHangingPrevention = false,
    bool LoseEarlyWakeUp = false,
    bool GidPerAttempt = false,
    bool KeepFullTrace = false);

/// <summary>What happened in a run, to show the sweep's fault coverage.</summary>
internal sealed record SimStats(
    int Transactions,
    int Committed,
    int Aborted,
    int CoordinatorCrashes,
    int LostWrites,
    int WriteErrors,
    int StuckAlerts,
    int OperatorAbortsAccepted,
    int TimersEarly,
    int TimersLate,
    int ClockPauses,
    int ClockStepsForward,
    int ClockStepsBack,
    int PermanentFaults,
    int StuckByPermanentFault,
    int RetriedAfterLift,
    int NullCompensations,
    int HangingRefused,
    int BarrierReplays,
    CheckoutStats Checkout)
{
    public static SimStats operator +(SimStats a, SimStats b) => new(
        a.Transactions + b.Transactions, a.Committed + b.Committed, a.Aborted + b.Aborted, a.CoordinatorCrashes + b.CoordinatorCrashes,
        a.LostWrites + b.LostWrites, a.WriteErrors + b.WriteErrors, a.StuckAlerts + b.StuckAlerts, a.OperatorAbortsAccepted + b.OperatorAbortsAccepted,
        a.TimersEarly + b.TimersEarly, a.TimersLate + b.TimersLate, a.ClockPauses + b.ClockPauses, a.ClockStepsForward + b.ClockStepsForward,
        a.ClockStepsBack + b.ClockStepsBack, a.PermanentFaults + b.PermanentFaults, a.StuckByPermanentFault + b.StuckByPermanentFault,
        a.RetriedAfterLift + b.RetriedAfterLift, a.NullCompensations + b.NullCompensations, a.HangingRefused + b.HangingRefused,
        a.BarrierReplays + b.BarrierReplays,
        new CheckoutStats(
            a.Checkout.Requests + b.Checkout.Requests, a.Checkout.HandlerRuns + b.Checkout.HandlerRuns, a.Checkout.Replays + b.Checkout.Replays,
            a.Checkout.InFlight + b.Checkout.InFlight, a.Checkout.TakeOvers + b.Checkout.TakeOvers, a.Checkout.Released + b.Checkout.Released,
            a.Checkout.ClaimsLost + b.Checkout.ClaimsLost, a.Checkout.Mismatches + b.Checkout.Mismatches, a.Checkout.CrashesInCheckout + b.Checkout.CrashesInCheckout));

    public static SimStats Zero { get; } = new(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, new CheckoutStats(0, 0, 0, 0, 0, 0, 0, 0, 0));
}

/// <summary>The verdict of one run.</summary>
internal sealed record SimResult(
    int Seed,
    IReadOnlyList<string> Violations,
    string Summary,
    string TraceTail,
    IReadOnlyList<string> FullTrace,
    ulong TraceHash,
    long Events,
    SimStats Stats)
{
    public bool Ok => Violations.Count == 0;

    public string Report() =>
        $"""
        Simulation seed {Seed} violated {Violations.Count} invariant(s):
          {string.Join("\n  ", Violations)}
        {Summary}
        Replay: TREATY_SIM_SEED={Seed} dotnet test tests/Treaty.Simulation
        Trace (last lines):
        {TraceTail}
        """;
}

/// <summary>
/// One simulated world: the real <see cref="TransactionEngine"/> with <see cref="SagaMachine"/>,
/// driven by clients sending Shop checkouts (with an idempotency key) to the Order participant, under the faults this seed picks; then the faults
/// stop, time runs on until every transaction is terminal, and the invariants are checked.
/// Everything is a pure function of the seed.
/// </summary>
internal sealed class SimulationRun
{
    private const string Order = "order";
    private const string Payment = "payment";
    private const string Inventory = "inventory";
    private const string Confirm = "confirm";
    private static readonly string[] BranchNames = [Order, Payment, Inventory, Confirm];

    private readonly SimOptions _options;
    private readonly Random _random;

    /// <summary>
    /// A second stream for the faults added after the first generator (timer skew, wall-clock steps,
    /// permanent faults), so that adding them did not reshuffle every other draw of a seed.
    /// </summary>
    private readonly Random _chaos;
    private readonly SimScheduler _scheduler;
    private readonly SimTimeProvider _time;
    private readonly FaultPlan _faults;
    private readonly SimStore _store;
    private readonly Dictionary<string, ParticipantHost> _hosts = new(StringComparer.Ordinal);
    private readonly OrderService _orders;
    private readonly PaymentService _payments;
    private readonly InventoryService _inventory;
    private readonly EffectLedger _ledger = new();
    private readonly Dictionary<string, Checkout> _checkouts = new(StringComparer.Ordinal);
    private readonly List<TransactionSpec> _specs = [];
    private readonly Dictionary<string, TransactionSpec> _specsByGid = new(StringComparer.Ordinal);

    /// <summary>Every gid a saga was built for, in order (more than the checkouts only in the gid-per-attempt variant).</summary>
    private readonly List<string> _gids = [];
    private readonly CheckoutDesk _desk;
    private readonly SimNetwork _network;
    private readonly SimBranchInvoker _invoker;
    private readonly IRandomSource _engineRandom;
    private readonly IProtocolMachine _machine;
    private readonly SimNode _control;
    private readonly SimNode _client;
    private readonly List<string> _violations = [];
    private SimNode _coordinatorNode;
    private TransactionEngine _engine;
    private readonly TraceObserver _observer;
    private int _operatorAborts;
    private int _clockPauses;
    private int _clockStepsForward;
    private int _clockStepsBack;
    private int _stuckByPermanentFault;
    private int _retriedAfterLift;
    private int _generation;
    private int _crashes;
    private int _maxCrashes;
    private long _faultEndTicks;

    private SimulationRun(SimOptions options)
    {
        _options = options;
        _random = new Random(options.Seed);
        _chaos = new Random(unchecked((options.Seed * 7919) + 104_729));
        _scheduler = new SimScheduler(new SimTrace(options.KeepFullTrace));
        _control = new SimNode(_scheduler, "sim");
        _client = new SimNode(_scheduler, "client");
        _engineRandom = new SeededRandomSource(options.Seed);
        _observer = new TraceObserver(_scheduler);
        _machine = options.SkipCompensation ? new SkipCompensationMachine(new SagaMachine(), Payment)
            : options.LoseEarlyWakeUp ? new LoseEarlyWakeUpMachine(new SagaMachine())
            : new SagaMachine();

        var intensity = _random.NextDouble();
        double Rate(double max) => intensity * _random.NextDouble() * max;
        _faults = new FaultPlan
        {
            DropRequest = Rate(0.25),
            DropReply = Rate(0.25),
            Duplicate = Rate(0.3),
            Delay = Rate(0.3),
            Unavailable = Rate(0.2),
            CrashAtWrite = _random.Next(4) == 0 ? 0 : Rate(0.08),
            WriteError = _random.Next(3) == 0 ? Rate(0.05) : 0,
            TimerSkew = _chaos.Next(3) == 0 ? 0 : _chaos.NextDouble() * 0.3,
            Permanent = _chaos.Next(10) == 0 ? PickPermanentFault() : null,
        };
        _time = new SimTimeProvider(_scheduler, new TimerSkew(new Random(unchecked((options.Seed * 31) + 7)), _faults.TimerSkew));
        _maxCrashes = _random.Next(0, 8);

        SimBarrier Barrier() => new(options.NoHangingPrevention ? SimBarrier.WithoutHangingPrevention : null);
        _orders = new OrderService(Barrier(), _ledger, _checkouts);
        _payments = new PaymentService(Barrier(), _ledger, _checkouts);
        _inventory = new InventoryService(Barrier(), _ledger, _checkouts);
        foreach (ShopService service in new ShopService[] { _orders, _payments, _inventory })
        {
            _hosts[service.Name] = new ParticipantHost(_scheduler, service);
        }

        _store = new SimStore(_scheduler, _random, Fate, CrashCoordinator);
        _network = new SimNetwork(_scheduler, _random, _faults, new SimNode(_scheduler, "net"), _hosts, _checkouts);
        _invoker = new SimBranchInvoker(_scheduler, _time, _network);
        (_coordinatorNode, _engine) = NewCoordinator();
        // The checkout path draws from a stream of its own too.
        _desk = new CheckoutDesk(
            _scheduler, _time, _faults, new Random(unchecked((options.Seed * 4099) + 17)), _network, _hosts[Order], _client, _control,
            () => (_coordinatorNode, _engine), SpecFor, Spawn, _violations, options.GidPerAttempt);
    }

    public static SimResult Execute(SimOptions options) => new SimulationRun(options).Run();

    private SimResult Run()
    {
        var faultSeconds = 2 + _random.Next(25);
        _faultEndTicks = TimeSpan.FromSeconds(faultSeconds).Ticks;
        BuildWorkload();
        ScheduleFaults();
        Trace(_control, $"seed {_options.Seed}: {_specs.Count} checkouts, faults for {faultSeconds}s: {_faults}, max coordinator crashes {_maxCrashes}, checkout {_desk}");

        StartRecovery(_coordinatorNode, _engine);
        _scheduler.At(_control, TimeSpan.FromTicks(_faultEndTicks), () =>
        {
            _faults.Active = false;
            Trace(_control, "faults stop; time runs on until quiescence");
        });

        var permanent = _faults.Permanent;
        var horizon = _faultEndTicks + TimeSpan.FromHours(12).Ticks;
        bool Quiet() => _scheduler.NowTicks > _network.LastDeliveryTicks && _store.TerminalCount == _store.Count && _desk.AllAnswered && !_desk.Busy;
        var stopped = _scheduler.RunUntil(
            () => _scheduler.NowTicks >= horizon || (!_faults.Active && (permanent is null ? Quiet() : SettledUnderPermanentFault())),
            maxEvents: EventBudget);
        if (permanent is not null && stopped && _scheduler.NowTicks < horizon && _scheduler.Executed < EventBudget)
        {
            // What an operator does: repair the participant, then retry what was stuck on it.
            var stuck = _store.All.Where(s => !s.IsTerminal).Select(s => s.Gid).ToList();
            _stuckByPermanentFault = stuck.Count;
            permanent.Active = false;
            Trace(_control, $"settled under the permanent fault: {stuck.Count} stuck ({string.Join(",", stuck)}); the operator lifts it and retries them");
            foreach (var gid in stuck)
            {
                RetryAfterLift(gid);
            }

            horizon = _scheduler.NowTicks + TimeSpan.FromHours(12).Ticks;
            stopped = _scheduler.RunUntil(() => _scheduler.NowTicks >= horizon || Quiet(), maxEvents: EventBudget);
        }
        else if (permanent is not null)
        {
            foreach (var state in _store.All)
            {
                if (!state.IsTerminal && !Attributable(state))
                {
                    _violations.Add($"{state.Gid}: liveness — still {state.Status.ToWire()}{(state.Stuck ? " (stuck)" : "")} under the permanent fault [{permanent.Description}] but not for it: {state.Reason}");
                }
            }
        }

        if (!stopped)
        {
            _violations.Add("harness: the event queue ran dry before quiescence");
        }

        if (_scheduler.Executed >= EventBudget)
        {
            _violations.Add("liveness: event budget exhausted (a livelock?)");
        }

        CheckInvariants();
        var committed = _store.All.Count(s => s.Status == TransactionStatus.Committed);
        var aborted = _store.All.Count(s => s.Status == TransactionStatus.Aborted);
        var summary = string.Create(CultureInfo.InvariantCulture,
            $"virtual time {SimScheduler.Format(_scheduler.NowTicks)}s, {_scheduler.Executed} events, {_specs.Count} transactions ({committed} committed, {aborted} aborted), {_crashes} coordinator crashes, {_store.LostWrites} lost writes, {_network.Messages} calls; faults {_faults}");
        Trace(_control, "end: " + summary);
        var stats = new SimStats(
            _specs.Count, committed, aborted, _crashes, _store.LostWrites, _store.WriteErrors, _observer.StuckAlerts, _operatorAborts,
            _time.Skew.Early, _time.Skew.Late, _clockPauses, _clockStepsForward, _clockStepsBack,
            permanent is null ? 0 : 1, _stuckByPermanentFault, _retriedAfterLift,
            _hosts.Values.Sum(h => h.Service.Barrier.NullCompensations), _hosts.Values.Sum(h => h.Service.Barrier.SkippedHanging),
            _hosts.Values.Sum(h => h.Service.Barrier.Replayed), _desk.Stats);
        return new SimResult(_options.Seed, _violations, summary, _scheduler.Trace.Tail(), _scheduler.Trace.All, _scheduler.Trace.Hash, _scheduler.Executed, stats);
    }

    private const long EventBudget = 3_000_000;

    /// <summary>
    /// A permanent fault for this seed: one operation of one participant answers 503 from some
    /// moment on, for one customer or for everyone. Compensations and the pivot are never
    /// abandoned, so these leave transactions stuck.
    /// </summary>
    private PermanentFault PickPermanentFault()
    {
        const string Compensate = ProtocolNames.Compensate;
        const string Forward = ProtocolNames.Action;
        var customer = PaymentService.Customers[_chaos.Next(PaymentService.Customers.Length)].Customer;
        return _chaos.Next(6) switch
        {
            0 => new PermanentFault($"payment.refund of {customer}", customer, (Payment, Compensate)),
            1 => new PermanentFault("payment down for good", null, (Payment, Forward), (Payment, Compensate)),
            2 => new PermanentFault("inventory.release", null, (Inventory, Compensate)),
            3 => new PermanentFault($"order.confirm of {customer}", customer, (Confirm, Forward)),
            4 => new PermanentFault($"order.cancel of {customer}", customer, (Order, Compensate)),
            _ => new PermanentFault("inventory down for good", null, (Inventory, Forward), (Inventory, Compensate)),
        };
    }

    /// <summary>
    /// Under a permanent fault, once the transient faults stopped: every transaction is stored, and
    /// terminal or stuck because of the permanent fault.
    /// </summary>
    private bool SettledUnderPermanentFault()
    {
        if (_store.TerminalCount + _store.StuckCount != _store.Count || !_desk.AllAnswered || _desk.Busy)
        {
            return false;
        }

        foreach (var state in _store.All)
        {
            if (!state.IsTerminal && !Attributable(state))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// A non-terminal transaction is excused only when its stored state is stuck, every operation it
    /// still waits for (actions while running, compensations while aborting) is one the permanent
    /// fault answers, and its stuck cause names such an operation and the fault's error.
    /// </summary>
    private bool Attributable(TransactionState state)
    {
        if (_faults.Permanent is not { } permanent || !state.Stuck)
        {
            return false;
        }

        var checkout = _checkouts[state.Gid];
        var waiting = 0;
        foreach (var branch in state.Branches)
        {
            foreach (var op in branch.Ops)
            {
                // What the transaction still drives: the operation of its phase (actions while it
                // runs, compensations while it aborts).
                if (op.Op != state.Phase || op.Status is not (OpStatus.Waiting or OpStatus.InFlight))
                {
                    continue;
                }

                waiting++;
                if (!permanent.Covers(checkout, branch.Name, op.Op))
                {
                    return false;
                }
            }
        }

        return waiting > 0
            && state.StuckOn is { Branch: { } stuckBranch } cause
            && permanent.Covers(checkout, stuckBranch, cause.Op)
            && cause.LastError == PermanentFault.Error;
    }

    /// <summary>The operator's retry of a transaction that was stuck on the lifted fault (waits for a live coordinator).</summary>
    private void RetryAfterLift(string gid)
    {
        var node = _coordinatorNode;
        var engine = _engine;
        if (!node.Alive)
        {
            _scheduler.At(_control, TimeSpan.FromMilliseconds(100), () => RetryAfterLift(gid));
            return;
        }

        _scheduler.At(node, TimeSpan.Zero, () => Spawn(async () =>
        {
            var result = await engine.RetryAsync(gid, "sim-operator", CancellationToken.None);
            Trace(node, $"operator retry {gid} after the fault was lifted: {result.Status}");
            if (result.Status == AdminStatus.Accepted)
            {
                _retriedAfterLift++;
            }
            else if (result.State is not { IsTerminal: true })
            {
                _violations.Add($"{gid}: the operator's retry after the fault was lifted was {result.Status} although it is {result.State?.Status.ToWire() ?? "missing"}");
            }
        }));
    }

    private (SimNode, TransactionEngine) NewCoordinator()
    {
        var node = new SimNode(_scheduler, $"coord#{++_generation}");
        var engine = new TransactionEngine(
            _store, _invoker, [_machine], _time, _engineRandom, NullLogger<TransactionEngine>.Instance, _observer)
        {
            UnsafeActBeforePersist = _options.ActBeforePersist,
        };
        return (node, engine);
    }

    /// <summary>What Treaty.Server's RecoveryService does: resume everything unfinished, then rescan what is due.</summary>
    private void StartRecovery(SimNode node, TransactionEngine engine)
    {
        Trace(node, "start (coordinator)");
        _scheduler.At(node, TimeSpan.Zero, () => Spawn(async () =>
        {
            var gids = await _store.ListDueAsync(DateTimeOffset.MaxValue, int.MaxValue, CancellationToken.None);
            Trace(node, $"recovery: resuming {gids.Count} ({string.Join(",", gids)})");
            foreach (var gid in gids)
            {
                await engine.ResumeAsync(gid, CancellationToken.None);
            }
        }));
        void Scan() => Spawn(async () =>
        {
            _scheduler.At(node, TimeSpan.FromSeconds(5), Scan);
            foreach (var gid in await _store.ListDueAsync(_time.GetUtcNow(), 1000, CancellationToken.None))
            {
                await engine.ResumeAsync(gid, CancellationToken.None);
            }
        });
        _scheduler.At(node, TimeSpan.FromSeconds(5), Scan);
    }

    private void CrashCoordinator(string why)
    {
        if (!_coordinatorNode.Alive)
        {
            return;
        }

        _crashes++;
        _coordinatorNode.Kill();
        Trace(_coordinatorNode, $"CRASH (coordinator) {why}");
        _scheduler.At(_control, TimeSpan.FromMilliseconds(5 + _random.Next(800)), () =>
        {
            // The crashed engine is abandoned, not disposed: a killed process runs no cleanup.
            (_coordinatorNode, _engine) = NewCoordinator();
            StartRecovery(_coordinatorNode, _engine);
        });
    }

    private WriteFate Fate()
    {
        if (!_faults.Active)
        {
            return WriteFate.Durable;
        }

        var r = _random.NextDouble();
        if (r < _faults.WriteError)
        {
            return _random.Next(2) == 0 ? WriteFate.FailNotDurable : WriteFate.FailButDurable;
        }

        r = _random.NextDouble();
        return _crashes >= _maxCrashes ? WriteFate.Durable
            : r < _faults.CrashAtWrite / 2 ? WriteFate.CrashBefore
            : r < _faults.CrashAtWrite ? WriteFate.CrashAfter
            : WriteFate.Durable;
    }

    private void BuildWorkload()
    {
        var count = 2 + _random.Next(8);
        for (var i = 0; i < count; i++)
        {
            var gid = $"tx{i + 1}";
            var customer = PaymentService.Customers[_random.Next(PaymentService.Customers.Length)].Customer;
            var items = new List<(string Sku, int Qty)>();
            var lines = 1 + _random.Next(2);
            // Mostly books and mugs; now and then a laptop (over most limits) or a pen (never in stock).
            foreach (var index in Enumerable.Range(0, InventoryService.Catalogue.Length).OrderBy(i => _random.Next(i < 2 ? 10 : 30)).Take(lines))
            {
                items.Add((InventoryService.Catalogue[index].Sku, 1 + _random.Next(3)));
            }

            var amount = items.Sum(it => InventoryService.Catalogue.First(c => c.Sku == it.Sku).PriceCents * it.Qty);
            var checkout = new Checkout(gid, customer, amount, items);
            _checkouts[gid] = checkout;

            var dag = _random.Next(3) == 0;
            var initial = 5 + _random.Next(200);
            var retry = new RetryPolicy(1 + _random.Next(6), initial, initial + _random.Next(2_000));
            long? Timeout() => _random.Next(4) == 0 ? null : 50 + _random.Next(1_500);
            var branches = ImmutableArray.Create(
                Branch(Order, "order/create", "order/cancel", [], false, Timeout(), null),
                Branch(Payment, "payment/reserve", "payment/refund", [Order], false, Timeout(), _random.Next(4) == 0 ? new RetryPolicy(1 + _random.Next(3), 10, 500) : null),
                Branch(Inventory, "inventory/reserve", "inventory/release", dag ? [Order] : [Payment], false, Timeout(), null),
                Branch(Confirm, "order/confirm", null, dag ? [Payment, Inventory] : [Inventory], true, Timeout(), null));
            long? txTimeout = _random.Next(4) == 0 ? 100 + _random.Next(5_000) : null;
            var spec = new TransactionSpec(gid, Protocol.Saga, checkout.PayloadJson, branches, txTimeout, retry);
            _specs.Add(spec);
            _specsByGid[gid] = spec;
            _gids.Add(gid);

            // The gid is derived from the key: key k3 is the checkout whose saga is tx3.
            var at = TimeSpan.FromMilliseconds(_random.Next(3_000));
            _desk.Start($"k{i + 1}", "POST /checkout " + checkout.PayloadJson, gid, at,
                $"{gid} {customer} {amount / 100.0:0.00} [{string.Join(",", items.Select(it => $"{it.Sku}x{it.Qty}"))}]{(dag ? " dag" : "")} timeout={txTimeout?.ToString(CultureInfo.InvariantCulture) ?? "-"} retry={retry.MaxAttempts}/{retry.InitialDelayMs}/{retry.MaxDelayMs}");
        }
    }

    /// <summary>The saga a checkout handler submits for checkout <paramref name="canonical"/> under <paramref name="gid"/>.</summary>
    private TransactionSpec SpecFor(string canonical, string gid)
    {
        var spec = _specsByGid[canonical];
        if (gid == canonical)
        {
            return spec;
        }

        if (!_checkouts.ContainsKey(gid))
        {
            _checkouts[gid] = _checkouts[canonical] with { Gid = gid };
            _gids.Add(gid);
        }

        return spec with { Gid = gid };
    }

    private static BranchSpec Branch(string name, string action, string? compensate, string[] dependsOn, bool pivot, long? timeoutMs, RetryPolicy? retry)
    {
        var urls = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        urls[ProtocolNames.Action] = $"sim://{action}";
        if (compensate is not null)
        {
            urls[ProtocolNames.Compensate] = $"sim://{compensate}";
        }

        return new BranchSpec(name, urls.ToImmutable(), [.. dependsOn], pivot, timeoutMs, retry);
    }

    private void ScheduleFaults()
    {
        TimeSpan InFaultPhase() => TimeSpan.FromTicks((long)(_random.NextDouble() * _faultEndTicks));

        for (var i = _random.Next(4); i > 0; i--)
        {
            _scheduler.At(_control, InFaultPhase(), () =>
            {
                if (_crashes < _maxCrashes)
                {
                    CrashCoordinator("at a random moment");
                }
            });
        }

        foreach (var host in _hosts.Values)
        {
            for (var i = _random.Next(3); i > 0; i--)
            {
                var down = TimeSpan.FromMilliseconds(10 + _random.Next(_random.Next(5) == 0 ? 20_000 : 2_000));
                _scheduler.At(_control, InFaultPhase(), () =>
                {
                    if (host.Up)
                    {
                        host.Crash();
                        _scheduler.At(_control, down, host.Restart);
                    }
                });
            }
        }

        if (_random.Next(3) == 0)
        {
            for (var i = 1 + _random.Next(2); i > 0; i--)
            {
                var by = TimeSpan.FromMilliseconds(500 + _random.Next(30_000));
                var kind = _chaos.Next(3);
                _scheduler.At(_control, InFaultPhase(), () =>
                {
                    switch (kind)
                    {
                        case 0:
                            // The whole machine stalls (a paused VM): both clocks leap, every timer is late.
                            _clockPauses++;
                            _scheduler.Jump(by);
                            Trace(_control, $"CLOCK JUMP +{by.TotalSeconds:0.000}s");
                            break;
                        case 1:
                            // NTP steps the wall clock forward: deadlines and retries fall due at once.
                            _clockStepsForward++;
                            _time.StepWallClock(by);
                            Trace(_control, $"CLOCK STEP +{by.TotalSeconds:0.000}s (wall clock only)");
                            break;
                        default:
                            // NTP sets the wall clock back: timers still fire on time, but what they
                            // wake finds nothing due yet and must wait for the wall clock to catch up.
                            _clockStepsBack++;
                            _time.StepWallClock(-by);
                            Trace(_control, $"CLOCK STEP -{by.TotalSeconds:0.000}s (wall clock only)");
                            break;
                    }
                });
            }
        }

        if (_faults.Permanent is { } permanent)
        {
            _scheduler.At(_control, TimeSpan.FromTicks((long)(_chaos.NextDouble() * _faultEndTicks)), () =>
            {
                permanent.Active = true;
                Trace(_control, $"PERMANENT FAULT from now on: {permanent.Description} answers 503");
            });
        }

        for (var i = _random.Next(7); i > 0; i--)
        {
            var abort = _random.Next(3) != 0;
            var index = _random.Next(_specs.Count);
            _scheduler.At(_control, InFaultPhase(), () => Operator(_specs[index].Gid, abort));
        }
    }

    /// <summary>An operator's retry or abort, racing the engine (an abort past the pivot is refused).</summary>
    private void Operator(string gid, bool abort)
    {
        var node = _coordinatorNode;
        var engine = _engine;
        if (!node.Alive)
        {
            return;
        }

        _scheduler.At(node, TimeSpan.Zero, () => Spawn(async () =>
        {
            Trace(node, $"operator {(abort ? "abort" : "retry")} {gid}");
            var result = abort
                ? await engine.AbortAsync(gid, "sim-operator", "simulated", CancellationToken.None)
                : await engine.RetryAsync(gid, "sim-operator", CancellationToken.None);
            Trace(node, $"operator {(abort ? "abort" : "retry")} {gid}: {result.Status}");
            if (abort && result.Status == AdminStatus.Accepted)
            {
                _operatorAborts++;
            }
        }));
    }

    /// <summary>Starts harness work in the current node; an exception is a finding, not a crash of the test.</summary>
    private void Spawn(Func<Task> work)
    {
        _ = Guard();

        async Task Guard()
        {
            try
            {
                await work();
            }
            catch (Exception ex)
            {
                _violations.Add($"harness/engine threw: {ex}");
            }
        }
    }

    private void Trace(SimNode node, string text) => _scheduler.Trace.Add(_scheduler, node.Name, text);

    private void CheckInvariants()
    {
        if (_scheduler.Escapes > 0)
        {
            _violations.Add($"determinism: {_scheduler.Escapes} callbacks escaped the scheduler to another thread");
        }

        foreach (var crash in _scheduler.Crashes)
        {
            _violations.Add($"unhandled exception in {crash}");
        }

        foreach (var service in _hosts.Values.Select(h => h.Service))
        {
            foreach (var anomaly in service.Anomalies)
            {
                _violations.Add($"{service.Name}: {anomaly}");
            }
        }

        foreach (var gid in _gids)
        {
            CheckTransaction(gid);
        }

        _desk.Check(_store.Peek, _ledger);

        // Conservation of money: wallets plus what confirmed orders were charged is what there was.
        var confirmed = _checkouts.Values.Where(c => _orders.Orders.GetValueOrDefault(c.Gid) == OrderStatus.Confirmed).ToList();
        var money = _payments.Balances.Values.Sum() + confirmed.Sum(c => c.AmountCents);
        if (money != PaymentService.InitialTotal)
        {
            _violations.Add($"money: wallets {_payments.Balances.Values.Sum()} + confirmed orders {confirmed.Sum(c => c.AmountCents)} = {money}, expected {PaymentService.InitialTotal}");
        }

        // Conservation of stock: nothing stays held; what is reserved is what confirmed orders bought.
        foreach (var (sku, _, stock) in InventoryService.Catalogue)
        {
            var available = _inventory.Available[sku];
            var reserved = _inventory.Reserved[sku];
            var sold = confirmed.Sum(c => c.Items.Where(i => i.Sku == sku).Sum(i => i.Qty));
            if (available + reserved != stock || reserved != sold || available < 0)
            {
                _violations.Add($"stock {sku}: available {available} + reserved {reserved}, initial {stock}, confirmed orders bought {sold}");
            }
        }

        foreach (var (gid, status) in _orders.Orders)
        {
            if (status == OrderStatus.Pending)
            {
                _violations.Add($"order {gid} is still PENDING after its transaction ended");
            }
        }
    }

    private void CheckTransaction(string gid)
    {
        var state = _store.Peek(gid);
        if (state is null)
        {
            // never submitted, or the submit was lost: CheckoutDesk.Check reports a 2xx without a saga
            return;
        }

        var counts = BranchNames.ToDictionary(b => b, b => _ledger.Of(gid, b), StringComparer.Ordinal);
        foreach (var (branch, c) in counts)
        {
            if (c.Applied > 1 || c.Compensated > 1)
            {
                _violations.Add($"{gid}.{branch}: applied twice in effect ({c})");
            }

            if (c.AppliedAfterCompensation > 0)
            {
                _violations.Add($"{gid}.{branch}: action took effect after its compensation ({c})");
            }
        }

        for (var i = 0; i < state.Branches.Length; i++)
        {
            var name = state.Branches[i].Name;
            if (state.Branches[i].Op(ProtocolNames.Action).Status == OpStatus.Failed && counts[name].Applied > 0)
            {
                _violations.Add($"{gid}.{name}: the coordinator saw a definitive failure but the action applied ({counts[name]})");
            }
        }

        var detail = string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}"));
        switch (state.Status)
        {
            case TransactionStatus.Committed:
                if (counts.Values.Any(c => c.Applied != 1 || c.Compensated != 0))
                {
                    _violations.Add($"{gid}: atomicity — committed but not every action applied exactly once and uncompensated ({detail})");
                }

                break;
            case TransactionStatus.Aborted:
                if (counts.Values.Any(c => c.Compensated != Math.Min(c.Applied, 1)) || counts[Confirm].Applied != 0)
                {
                    _violations.Add($"{gid}: atomicity — aborted ({state.Reason}) but an applied action was not compensated exactly once ({detail})");
                }

                break;
            default:
                _violations.Add($"{gid}: liveness — still {state.Status.ToWire()}{(state.Stuck ? " (stuck)" : "")} after the faults stopped{(_faults.Permanent is null ? "" : " and the permanent fault was lifted")}: {state.Reason}");
                break;
        }
    }
}
