using System.Collections.Immutable;
using System.Globalization;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Simulation.Harness;

/// <summary>Which world a run builds.</summary>
internal enum SimMode
{
    /// <summary>A mix of every protocol, every fault but partitions.</summary>
    Normal,

    /// <summary>3PC only, with participants cut off from the coordinator for longer than their timeout.</summary>
    Partition,

    /// <summary>The choreographed checkout: the messaging kit in each service under a faulty broker and crashes (<see cref="Choreography.ChoreographyWorld"/>).</summary>
    Choreography,

    /// <summary>
    /// The normal mode's world driven by three coordinator instances sharing one store under
    /// leases: skewed clocks, pauses longer than a lease, crashes restarted under a new owner.
    /// </summary>
    MultiCoordinator,
}

/// <summary>What a run should use; the defaults are the correct system.</summary>
/// <param name="StopAtFirstViolation">Stop the run at its first violation (variant sweeps only count failing seeds).</param>
internal sealed record SimOptions(
    int Seed,
    SimVariant Variant = SimVariant.None,
    SimMode Mode = SimMode.Normal,
    bool KeepFullTrace = false,
    bool StopAtFirstViolation = false);

/// <summary>A transaction whose branches ended some committed and some not.</summary>
/// <param name="Committed">The branches that committed (captured), in the order of the transaction.</param>
/// <param name="NotCommitted">The others (released, or never held).</param>
internal sealed record MixedOutcome(string Gid, Protocol Protocol, IReadOnlyList<string> Committed, IReadOnlyList<string> NotCommitted);

/// <summary>The verdict of one run.</summary>
/// <param name="Mixed">Transactions whose branches ended some committed and some not.</param>
internal sealed record SimResult(
    int Seed,
    SimOptions Options,
    IReadOnlyList<string> Violations,
    IReadOnlyList<MixedOutcome> Mixed,
    string Summary,
    string TraceTail,
    IReadOnlyList<string> FullTrace,
    ulong TraceHash,
    long Events,
    SimStats Stats)
{
    public bool Ok => Violations.Count == 0;

    public string Replay =>
        $"TREATY_SIM_SEED={Seed}{(Options.Variant == SimVariant.None ? "" : $" TREATY_SIM_VARIANT={SimVariants.Name(Options.Variant)}")}{(Options.Mode, Options.Variant) switch { (SimMode.Partition, _) => " TREATY_SIM_VARIANT=partition", (SimMode.Choreography, SimVariant.None) => " TREATY_SIM_VARIANT=choreography", (SimMode.MultiCoordinator, SimVariant.None) => " TREATY_SIM_VARIANT=multi", _ => "" }} dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep";

    public string Report() =>
        $"""
        Simulation seed {Seed} ({SimVariants.Name(Options.Variant)}{Options.Mode switch { SimMode.Partition => ", partition mode", SimMode.Choreography => ", choreography mode", SimMode.MultiCoordinator => ", multi-coordinator mode", _ => "" }}) violated {Violations.Count} invariant(s):
          {string.Join("\n  ", Violations.Take(30))}
        {Summary}
        Replay: {Replay}
        Trace (last lines):
        {TraceTail}
        """;
}

/// <summary>
/// One simulated world: the real <see cref="TransactionEngine"/> with every protocol machine, driven
/// by Shop checkouts (saga, tcc, 2pc, 3pc: clients sending them with an idempotency key to the Order
/// participant) and two-phase messages (the Payment service as sender), under the faults this seed
/// picks; then the faults stop, time runs on until everything is terminal and nothing is in doubt,
/// and the invariants are checked. Everything is a pure function of the seed.
/// </summary>
internal sealed partial class SimulationRun
{
    private const string Order = "order";
    private const string Payment = "payment";
    private const string Inventory = "inventory";
    private const string Confirm = "confirm";
    private const string Loyalty = "loyalty";
    private const string Ledger = "ledger";
    private const long EventBudget = 3_000_000;

    /// <summary>
    /// How long time runs on after the faults stopped (and again after a permanent fault was lifted)
    /// before whatever is still unfinished is a liveness violation. The longest legitimate wait is a
    /// retry at its capped delay (at most 2.2 s here), a backward clock step (at most 61 s), a
    /// checkout's idempotency lock (at most 20 s) or a 3PC participant's timeout (at most 15 s): an
    /// hour is far beyond all of them.
    /// </summary>
    private static readonly TimeSpan Horizon = TimeSpan.FromHours(1);

    private static readonly Protocol[] Protocols = [Protocol.Saga, Protocol.Tcc, Protocol.TwoPhaseCommit, Protocol.ThreePhaseCommit, Protocol.Msg];

    private readonly SimOptions _options;
    private readonly Random _random;

    /// <summary>
    /// A second stream for the faults added after the first generator (timer skew, wall-clock steps,
    /// permanent faults), so that adding them did not reshuffle every other draw of a seed.
    /// </summary>
    private readonly Random _chaos;

    /// <summary>A third for the protocols beyond the saga, the focused faults and the partitions.</summary>
    private readonly Random _more;
    private readonly SimScheduler _scheduler;
    private readonly SimTimeProvider _time;
    private readonly FaultPlan _faults;
    private readonly SimStore _store;
    private readonly Dictionary<string, ParticipantHost> _hosts = new(StringComparer.Ordinal);
    private readonly OrderService _orders;
    private readonly PaymentService _payments;
    private readonly InventoryService _inventory;
    private readonly MessageConsumer _loyalty;
    private readonly MessageConsumer _ledgerService;
    private readonly EffectLedger _ledger = new();
    private readonly Dictionary<string, Checkout> _checkouts = new(StringComparer.Ordinal);
    private readonly List<TransactionSpec> _specs = [];
    private readonly Dictionary<string, TransactionSpec> _specsByGid = new(StringComparer.Ordinal);

    /// <summary>Every gid a transaction was built for, in order (more than the workload only in the gid-per-attempt variant).</summary>
    private readonly List<string> _gids = [];

    /// <summary>When each transaction of the workload starts (operators aim some of their actions just after).</summary>
    private readonly Dictionary<string, TimeSpan> _startsAt = new(StringComparer.Ordinal);
    private readonly CheckoutDesk _desk;
    private readonly MessageSender _sender;
    private readonly List<InDoubtResolver> _resolvers = [];
    private readonly SimNetwork _network;
    private readonly SimBranchInvoker _invoker;
    private readonly IRandomSource _engineRandom;
    private readonly IProtocolMachine[] _machines;
    private readonly SimNode _control;
    private readonly SimNode _client;
    private readonly List<string> _violations = [];
    private readonly List<MixedOutcome> _mixed = [];
    private readonly TraceObserver _observer;
    private SimNode _coordinatorNode;
    private TransactionEngine _engine;
    private int _operatorAborts;
    private int _clockPauses;
    private int _clockStepsForward;
    private int _clockStepsBack;
    private int _stuckByPermanentFault;
    private int _retriedAfterLift;
    private int _generation;
    private int _crashes;
    private int _focusedCrashes;
    private int _focusedWriteErrors;
    private int _lazyAbortsLost;
    private readonly int _maxCrashes;
    private long _faultEndTicks;
    private int _partitionsLeft;
    private bool _stop;
    private bool _lifted;

    private SimulationRun(SimOptions options)
    {
        _options = options;
        _random = new Random(options.Seed);
        _chaos = new Random(unchecked((options.Seed * 7919) + 104_729));
        _more = new Random(unchecked((options.Seed * 6151) + 3));
        _scheduler = new SimScheduler(new SimTrace(options.KeepFullTrace));
        _control = new SimNode(_scheduler, "sim");
        _client = new SimNode(_scheduler, "client");
        _engineRandom = new SeededRandomSource(options.Seed);
        _observer = new TraceObserver(_scheduler);
        _machines = [.. new IProtocolMachine[]
        {
            new SagaMachine(), new TccMachine(), new TwoPhaseCommitMachine(), new ThreePhaseCommitMachine(), new MessageMachine(),
        }.Select(m => SimVariants.Machine(m, options.Variant))];

        var intensity = _random.NextDouble();
        double Rate(double max) => intensity * _random.NextDouble() * max;
        var focused = _more.Next(2) == 0;
        _faults = new FaultPlan
        {
            DropRequest = Rate(0.25),
            DropReply = Rate(0.25),
            Duplicate = Rate(0.3),
            Delay = Rate(0.3),
            ErrorBefore = Rate(0.2),
            CrashAtWrite = _random.Next(4) == 0 ? 0 : Rate(0.08),
            WriteError = _random.Next(3) == 0 ? Rate(0.05) : 0,
            TimerSkew = _chaos.Next(3) == 0 ? 0 : _chaos.NextDouble() * 0.3,
            Permanent = _chaos.Next(10) == 0 ? PickPermanentFault() : null,
            ErrorAfter = intensity * _more.NextDouble() * 0.15,
            Slow = intensity * _more.NextDouble() * 0.15,
            FocusOnDecisions = focused ? 0.2 + (_more.NextDouble() * 0.5) : 0,
            WarmUp = _more.Next(3) == 0 ? TimeSpan.Zero : TimeSpan.FromMilliseconds(20 + _more.Next(500)),
        };
        _time = new SimTimeProvider(_scheduler, new TimerSkew(new Random(unchecked((options.Seed * 31) + 7)), _faults.TimerSkew));
        _maxCrashes = _random.Next(0, 8);
        if (focused)
        {
            // 3PC's synchrony assumption: the coordinator's outages (at most 8 crashes of at most
            // 0.8 s each) add up to less than the participants' 3PC timeout (at least 8 s).
            _maxCrashes = Math.Max(_maxCrashes, 2 + _more.Next(7));
        }

        SimBarrier Barrier() => new(options.Variant == SimVariant.NoHangingPrevention ? SimBarrier.WithoutHangingPrevention : null);
        _orders = new OrderService(Barrier(), _ledger, _checkouts);
        _payments = new PaymentService(Barrier(), _ledger, _checkouts);
        _inventory = new InventoryService(Barrier(), _ledger, _checkouts);
        _loyalty = new MessageConsumer(Loyalty, Barrier(), _ledger, _checkouts);
        _ledgerService = new MessageConsumer(Ledger, Barrier(), _ledger, _checkouts);
        foreach (var service in new ShopService[] { _orders, _payments, _inventory, _loyalty, _ledgerService })
        {
            service.Now = () => _scheduler.NowTicks;
            _hosts[service.Name] = new ParticipantHost(_scheduler, service);
        }

        _multi = new Random(unchecked((options.Seed * 5003) + 23));
        _store = new SimStore(_scheduler, _random, Fate, CrashCoordinator)
        {
            IgnoreFence = options.Variant == SimVariant.StoreIgnoresFence,
            TraceRenewals = options.Mode == SimMode.MultiCoordinator,
            Issuing = options.Mode == SimMode.MultiCoordinator ? (node, state) => MaybePauseMidCall(node, $"writing {state.Gid} v{state.Version}") : null,
        };
        _network = new SimNetwork(_scheduler, _random, new Random(unchecked((options.Seed * 8191) + 11)), _faults, new SimNode(_scheduler, "net"), _hosts, _checkouts) { Arrived = Arrived };
        _invoker = new SimBranchInvoker(
            _scheduler, _time, _network,
            options.Variant == SimVariant.KeyPerAttempt ? static c => $"{c.IdempotencyKey}#{c.Attempt.ToString(CultureInfo.InvariantCulture)}" : static c => c.IdempotencyKey,
            SimVariants.Classification(options.Variant),
            Leaving);
        if (options.Mode == SimMode.MultiCoordinator)
        {
            BuildInstances();
            (_coordinatorNode, _engine) = (_instances[0].Node, _instances[0].Engine);
        }
        else
        {
            (_coordinatorNode, _engine) = NewCoordinator();
        }

        // The checkout path draws from a stream of its own too.
        _desk = new CheckoutDesk(
            _scheduler, _time, _faults, new Random(unchecked((options.Seed * 4099) + 17)), _network, _hosts[Order], _client, _control,
            Coordinator, SpecFor, Spawn, _violations, options.Variant == SimVariant.GidPerAttempt);
        _sender = new MessageSender(
            _scheduler, _network, _hosts[Payment], Coordinator, Spawn, _violations, _faults,
            new Random(unchecked((options.Seed * 2833) + 5)), _control);

        // The participants' in-doubt timeouts. 2PC's may be short: a 2PC participant only ever
        // follows the coordinator. 3PC's is longer than the coordinator's outages in the normal mode
        // (see _maxCrashes), and short in the partition mode, where partitions outlast it.
        var twoPhase = TimeSpan.FromMilliseconds(200 + _more.Next(2_800));
        var threePhase = options.Mode == SimMode.Partition
            ? TimeSpan.FromMilliseconds(500 + _more.Next(1_500))
            : TimeSpan.FromMilliseconds(8_000 + _more.Next(7_000));
        var policy = options.Variant == SimVariant.TwoPhaseParticipantDecidesAlone ? ResolverPolicy.TwoPhaseDecidesAlone : ResolverPolicy.Kit;
        foreach (var name in new[] { Order, Payment, Inventory })
        {
            _resolvers.Add(new InDoubtResolver(
                _scheduler, _network, _hosts[name], Coordinator, Spawn,
                new Random(unchecked((options.Seed * 1009) + name.Length)), twoPhase, threePhase, policy));
        }

        _partitionsLeft = options.Mode == SimMode.Partition ? 1 + _more.Next(2) : 0;
        var lockWait = _more.Next(2) == 0 ? 0 : _more.NextDouble();
        _payments.LockWaitTimesOut = () => lockWait > 0 && _more.NextDouble() < lockWait;
    }

    public static SimResult Execute(SimOptions options) =>
        options.Mode == SimMode.Choreography ? Choreography.ChoreographyWorld.Execute(options) : new SimulationRun(options).Run();

    private SimResult Run()
    {
        var faultSeconds = 2 + _random.Next(25);
        _faultEndTicks = TimeSpan.FromSeconds(faultSeconds).Ticks;
        BuildWorkload();
        ScheduleFaults();
        Trace(_control, $"seed {_options.Seed} ({SimVariants.Name(_options.Variant)}, {_options.Mode}): {_specs.Count} transactions ({string.Join(" ", _specs.Select(s => $"{s.Gid}:{s.Protocol.ToWire()}"))}), faults for {faultSeconds}s: {_faults}, max coordinator crashes {_maxCrashes}, checkout {_desk}, sender {_sender}, in-doubt timeouts 2pc {_resolvers[0].TwoPhaseTimeout.TotalMilliseconds:0}ms 3pc {_resolvers[0].ThreePhaseTimeout.TotalMilliseconds:0}ms");

        if (Multi)
        {
            foreach (var instance in _instances)
            {
                StartInstance(instance);
            }
        }
        else
        {
            StartRecovery(_coordinatorNode, _engine);
        }

        _scheduler.At(_control, TimeSpan.FromTicks(_faultEndTicks), () =>
        {
            _faults.Active = false;
            Trace(_control, "faults stop; time runs on until quiescence");
        });

        var permanent = _faults.Permanent;
        var horizon = _faultEndTicks + Horizon.Ticks;
        var stopped = _scheduler.RunUntil(
            () => _stop || _scheduler.NowTicks >= horizon || (!_faults.Active && (permanent is null ? Quiet() : SettledUnderPermanentFault())),
            maxEvents: EventBudget);
        if (permanent is not null && stopped && !_stop && _scheduler.NowTicks < horizon && _scheduler.Executed < EventBudget)
        {
            // What an operator does: repair the participant, then retry what was stuck on it.
            var stuck = _store.All.Where(s => !s.IsTerminal).Select(s => s.Gid).ToList();
            _stuckByPermanentFault = stuck.Count;
            permanent.Active = false;
            _lifted = true;
            Trace(_control, $"settled under the permanent fault: {stuck.Count} stuck ({string.Join(",", stuck)}); the operator lifts it and retries them");
            foreach (var gid in stuck)
            {
                RetryAfterLift(gid);
            }

            horizon = _scheduler.NowTicks + Horizon.Ticks;
            stopped = _scheduler.RunUntil(() => _stop || _scheduler.NowTicks >= horizon || Quiet(), maxEvents: EventBudget);
        }
        else if (permanent is not null && !_stop)
        {
            foreach (var state in _store.All)
            {
                if (!state.IsTerminal && !Attributable(state))
                {
                    Violation($"{state.Gid}: liveness — still {state.Status.ToWire()}{(state.Stuck ? " (stuck)" : "")} under the permanent fault [{permanent.Description}] but not for it: {state.Reason}");
                }
            }
        }

        if (!stopped)
        {
            Violation("harness: the event queue ran dry before quiescence");
        }

        if (_scheduler.Executed >= EventBudget)
        {
            Violation("liveness: event budget exhausted (a livelock?)");
        }

        if (!_stop)
        {
            CheckInvariants();
        }

        var summary = string.Create(CultureInfo.InvariantCulture,
            $"virtual time {SimScheduler.Format(_scheduler.NowTicks)}s, {_scheduler.Executed} events, {_specs.Count} transactions ({string.Join(", ", Protocols.Select(p => $"{p.ToWire()}: {Count(p, TransactionStatus.Committed)} committed, {Count(p, TransactionStatus.Aborted)} aborted"))}), {_crashes} coordinator crashes, {_store.LostWrites} lost writes, {_network.Messages} messages; faults {_faults}{(Multi ? "; " + MultiSummary() : "")}");
        Trace(_control, "end: " + summary);
        return new SimResult(_options.Seed, _options, _violations, _mixed, summary, _scheduler.Trace.Tail(), _scheduler.Trace.All, _scheduler.Trace.Hash, _scheduler.Executed, Stats());
    }

    private int Count(Protocol protocol, TransactionStatus status) => _store.All.Count(s => s.Spec.Protocol == protocol && s.Status == status);

    private SimStats Stats()
    {
        var stats = new SimStats().Add("seeds", 1);
        foreach (var protocol in Protocols)
        {
            stats.Add($"{protocol.ToWire()} transactions", _specs.Count(s => s.Protocol == protocol))
                .Add($"{protocol.ToWire()} committed", Count(protocol, TransactionStatus.Committed))
                .Add($"{protocol.ToWire()} aborted", Count(protocol, TransactionStatus.Aborted));
        }

        stats.Add("coordinator crashes", _crashes)
            .Add("coordinator focused-crashes", _focusedCrashes)
            .Add("coordinator lost-writes", _store.LostWrites)
            .Add("coordinator write-errors", _store.WriteErrors)
            .Add("coordinator focused-write-errors", _focusedWriteErrors)
            .Add("coordinator lazy-aborts-lost", _lazyAbortsLost)
            .Add("coordinator stuck-alerts", _observer.StuckAlerts)
            .Add("coordinator operator-aborts", _operatorAborts)
            .Add("time timers-early", _time.Skew.Early)
            .Add("time timers-late", _time.Skew.Late)
            .Add("time pauses", _clockPauses)
            .Add("time steps-forward", _clockStepsForward)
            .Add("time steps-back", _clockStepsBack)
            .Add("network 5xx-before", _network.ErrorsBefore)
            .Add("network 5xx-after-commit", _network.ErrorsAfter)
            .Add("network participant-crashes", _hosts.Values.Sum(h => h.Crashes))
            .Add("network partitions", _network.Partitions.Count)
            .Add("network lost-to-partitions", _network.LostToPartitions)
            .Add("permanent faults", _faults.Permanent is null ? 0 : 1)
            .Add("permanent stuck", _stuckByPermanentFault)
            .Add("permanent retried-after-lift", _retriedAfterLift)
            .Add("barrier null-compensations", _hosts.Values.Sum(h => h.Service.Barrier.NullCompensations))
            .Add("barrier hanging-refused", _hosts.Values.Sum(h => h.Service.Barrier.SkippedHanging))
            .Add("barrier replays", _hosts.Values.Sum(h => h.Service.Barrier.Replayed))
            .Add("in-doubt questions", _resolvers.Sum(r => r.Questions))
            .Add("in-doubt local-commits", _resolvers.Sum(r => r.LocalCommits))
            .Add("in-doubt local-aborts", _resolvers.Sum(r => r.LocalAborts))
            .Add("in-doubt 3pc-decided-alone", _resolvers.Sum(r => r.DecidedAlone));
        var sender = _sender.Stats;
        stats.Add("sender registered", sender.Registered)
            .Add("sender committed", sender.Committed)
            .Add("sender rolled-back", sender.RolledBack)
            .Add("sender fenced", sender.Fenced)
            .Add("sender crashed-before-submit", sender.CrashedBeforeSubmit)
            .Add("sender submitted", sender.Submitted)
            .Add("sender query-fences", _payments.Fences)
            .Add("sender query-lock-waits", _payments.LockWaits);
        var c = _desk.Stats;
        stats.Add("checkout requests", c.Requests)
            .Add("checkout handler-runs", c.HandlerRuns)
            .Add("checkout replays", c.Replays)
            .Add("checkout in-flight-409", c.InFlight)
            .Add("checkout take-overs", c.TakeOvers)
            .Add("checkout released", c.Released)
            .Add("checkout claims-lost", c.ClaimsLost)
            .Add("checkout mismatches", c.Mismatches)
            .Add("checkout order-crashes", c.CrashesInCheckout)
            .Add("violations mixed", _mixed.Count);
        if (Multi)
        {
            AddMultiStats(stats);
        }

        return stats;
    }

    /// <summary>Nothing left to happen: no message in flight, every transaction terminal, every checkout answered, every sender done, nothing in doubt.</summary>
    private bool Quiet() =>
        _scheduler.NowTicks > _network.LastDeliveryTicks && _store.TerminalCount == _store.Count && _desk.AllAnswered && !_desk.Busy && !_sender.Busy && NothingInDoubt();

    private bool NothingInDoubt() => _orders.InDoubt.Count == 0 && _payments.InDoubt.Count == 0 && _inventory.InDoubt.Count == 0;

    /// <summary>
    /// A permanent fault for this seed: some operations of one participant answer 503 from some
    /// moment on, for one customer or for everyone. Compensations, final ops, the pivot and
    /// queryPrepared are never abandoned, so these leave transactions stuck.
    /// </summary>
    private PermanentFault PickPermanentFault()
    {
        var customer = PaymentService.Customers[_chaos.Next(PaymentService.Customers.Length)].Customer;
        static bool Undo(string op) => op is ProtocolNames.Compensate or ProtocolNames.Cancel or ProtocolNames.Rollback or ProtocolNames.Abort;
        static bool Final(string? branch, string op) =>
            (branch == Confirm && op == ProtocolNames.Action) || op is ProtocolNames.Confirm or ProtocolNames.Commit or ProtocolNames.DoCommit;
        return _chaos.Next(6) switch
        {
            0 => new PermanentFault($"payment undo ops of {customer}", customer, (s, _, op) => s == Payment && Undo(op)),
            1 => new PermanentFault("payment down for good", null, (s, _, _) => s == Payment),
            2 => new PermanentFault("inventory undo ops", null, (s, _, op) => s == Inventory && Undo(op)),
            3 => new PermanentFault($"order final ops of {customer}", customer, (s, b, op) => s == Order && Final(b, op)),
            4 => new PermanentFault($"order undo ops of {customer}", customer, (s, _, op) => s == Order && Undo(op)),
            _ => new PermanentFault("inventory down for good", null, (s, _, _) => s == Inventory),
        };
    }

    /// <summary>
    /// Under a permanent fault, once the transient faults stopped: every transaction is stored, and
    /// terminal or stuck because of the permanent fault; every sender is done and nothing is in doubt.
    /// </summary>
    private bool SettledUnderPermanentFault()
    {
        if (_store.TerminalCount + _store.StuckCount != _store.Count || !_desk.AllAnswered || _desk.Busy || _sender.Busy || !NothingInDoubt())
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
    /// still drives (the op of its phase, waiting or in flight) is one the permanent fault answers,
    /// and its stuck cause names such an operation and the fault's error.
    /// </summary>
    private bool Attributable(TransactionState state)
    {
        if (_faults.Permanent is not { } permanent || !state.Stuck)
        {
            return false;
        }

        var checkout = _checkouts[state.Gid];
        var phaseOp = (_machines.First(m => m.Protocol == state.Spec.Protocol).Shape.PhaseNamed(state.Phase)).Op;
        var waiting = 0;
        bool Covered(string? branch, string op) =>
            permanent.Covers(checkout, ServiceOf(state.Spec, branch, op), branch, op);
        for (var i = 0; i < state.Branches.Length; i++)
        {
            foreach (var op in state.Branches[i].Ops)
            {
                if (op.Op != phaseOp || op.Status is not (OpStatus.Waiting or OpStatus.InFlight))
                {
                    continue;
                }

                waiting++;
                if (!Covered(state.Branches[i].Name, op.Op))
                {
                    return false;
                }
            }
        }

        foreach (var op in state.Ops)
        {
            if (op.Op == phaseOp && op.Status is OpStatus.Waiting or OpStatus.InFlight)
            {
                waiting++;
                if (!Covered(null, op.Op))
                {
                    return false;
                }
            }
        }

        return waiting > 0
            && state.StuckOn is { } cause
            && Covered(cause.Branch, cause.Op)
            && cause.LastError is { } error && error.Contains(PermanentFault.Error, StringComparison.Ordinal);
    }

    private static string ServiceOf(TransactionSpec spec, string? branch, string op)
    {
        var url = branch is null ? spec.UrlOf(op) : spec.Branches.First(b => b.Name == branch).UrlOf(op);
        return SimNetwork.Parse(url!).Service;
    }

    /// <summary>The operator's retry of a transaction that was stuck on the lifted fault (waits for a live coordinator).</summary>
    private void RetryAfterLift(string gid)
    {
        var (node, engine) = Multi ? Coordinator() : (_coordinatorNode, _engine);
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
                Violation($"{gid}: the operator's retry after the fault was lifted was {result.Status} although it is {result.State?.Status.ToWire() ?? "missing"}");
            }
        }));
    }

    /// <summary>One coordinator at a time, restarted under the same name: a restart takes its own
    /// leases back at once, as a restarted instance with a stable id does.</summary>
    private static readonly LeaseRequest SingleCoordinatorLease = new("coordinator", TimeSpan.FromSeconds(15));

    private (SimNode, TransactionEngine) NewCoordinator()
    {
        var node = new SimNode(_scheduler, $"coord#{++_generation}");
        var engine = new TransactionEngine(
            _store, _invoker, _machines, _time, _engineRandom, NullLogger<TransactionEngine>.Instance, _observer, SingleCoordinatorLease)
        {
            UnsafeActBeforePersist = _options.Variant == SimVariant.ActBeforePersist,
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
        if (Multi)
        {
            CrashInstance(why);
            return;
        }

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

    /// <summary>The journal kinds of a write that carries a decision: where durability bugs hide.</summary>
    private static bool CarriesDecision(IReadOnlyList<JournalEntry> journal)
    {
        foreach (var entry in journal)
        {
            switch (entry.Kind)
            {
                case JournalKinds.Submitted or JournalKinds.Registered or JournalKinds.Committing or JournalKinds.Aborting
                    or JournalKinds.Committed or JournalKinds.Aborted or JournalKinds.Vote or JournalKinds.Phase
                    or JournalKinds.SenderCommitted or JournalKinds.Notified or JournalKinds.OperatorAbort or JournalKinds.Resumed:
                    return true;
                case JournalKinds.AttemptStarted when entry.Op is ProtocolNames.Confirm or ProtocolNames.Commit or ProtocolNames.DoCommit
                    or ProtocolNames.Compensate or ProtocolNames.Cancel or ProtocolNames.Abort or ProtocolNames.QueryPrepared:
                    return true;
            }
        }

        return false;
    }

    private WriteFate Fate(TransactionState state, IReadOnlyList<JournalEntry> journal)
    {
        var fate = PickFate(journal);
        if (fate == WriteFate.CrashBefore && journal.Any(e => e.Kind == JournalKinds.Notified))
        {
            _lazyAbortsLost++;
        }

        return fate;
    }

    // A write whose calls did not wait for it: presumed abort's notified rollbacks, or a saga's
    // first call of an action after the submit (a forward step; the pivot's also matches, which
    // only adds crashes where none is needed).
    private static bool CallsLeftAhead(IReadOnlyList<JournalEntry> journal) =>
        journal.Any(e => e.Kind == JournalKinds.Notified)
        || (journal.Any(e => e.Kind == JournalKinds.AttemptStarted && e.Op == ProtocolNames.Action && e.Attempt == 1)
            && !journal.Any(e => e.Kind == JournalKinds.Submitted));

    private WriteFate PickFate(IReadOnlyList<JournalEntry> journal)
    {
        if (!_faults.Active)
        {
            return WriteFate.Durable;
        }

        if (_faults.FocusOnDecisions > 0 && CallsLeftAhead(journal)
            && _crashes < _maxCrashes && _more.NextDouble() < 0.8)
        {
            // BUGGIFY: a write whose calls already left before it was durable (presumed abort's
            // lazy abort, a saga's forward step) is where a crash just before it becomes durable hurts.
            _focusedCrashes++;
            return WriteFate.CrashBefore;
        }

        if (_faults.FocusOnDecisions > 0 && CarriesDecision(journal) && _more.NextDouble() < _faults.FocusOnDecisions)
        {
            // BUGGIFY: right before or right after the write becomes durable, or an ambiguous error.
            var pick = _more.Next(10);
            if (pick < 6 && _crashes < _maxCrashes)
            {
                _focusedCrashes++;
                return pick < 3 ? WriteFate.CrashBefore : WriteFate.CrashAfter;
            }

            _focusedWriteErrors++;
            return pick % 2 == 0 ? WriteFate.FailNotDurable : WriteFate.FailButDurable;
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
        var partition = _options.Mode == SimMode.Partition;
        var count = partition ? 2 + _more.Next(5) : 3 + _more.Next(8);
        var order = Protocols.OrderBy(_ => _more.Next()).ToArray();
        for (var i = 0; i < count; i++)
        {
            var protocol = partition ? Protocol.ThreePhaseCommit : order[i % order.Length];
            var customer = PaymentService.Customers[_random.Next(PaymentService.Customers.Length)].Customer;
            var items = new List<(string Sku, int Qty)>();
            long amount;
            if (protocol == Protocol.Msg)
            {
                amount = (5 + _more.Next(60)) * 100;
            }
            else
            {
                var lines = 1 + _random.Next(2);
                // Mostly books and mugs; now and then a laptop (over most limits) or a pen (never in stock).
                foreach (var index in Enumerable.Range(0, InventoryService.Catalogue.Length).OrderBy(i => _random.Next(i < 2 ? 10 : 30)).Take(lines))
                {
                    items.Add((InventoryService.Catalogue[index].Sku, 1 + _random.Next(3)));
                }

                amount = items.Sum(it => InventoryService.Catalogue.First(c => c.Sku == it.Sku).PriceCents * it.Qty);
            }

            var gid = protocol == Protocol.Msg ? $"m{i + 1}" : $"tx{i + 1}";
            var checkout = new Checkout(gid, protocol, customer, amount, items);
            _checkouts[gid] = checkout;

            var initial = 5 + _random.Next(200);
            var retry = new RetryPolicy(1 + _random.Next(6), initial, initial + _random.Next(2_000));
            long? Timeout() => !partition && _random.Next(4) == 0 ? null : 50 + _random.Next(1_500);
            long? txTimeout = _random.Next(4) == 0 ? 100 + _random.Next(5_000) : null;
            var at = TimeSpan.FromMilliseconds(_random.Next(3_000));
            _startsAt[gid] = at;
            var what = $"{gid} {protocol.ToWire()} {customer} {amount / 100.0:0.00}{(items.Count > 0 ? $" [{string.Join(",", items.Select(it => $"{it.Sku}x{it.Qty}"))}]" : "")}";
            TransactionSpec spec;
            switch (protocol)
            {
                case Protocol.Saga:
                    var dag = _random.Next(3) == 0;
                    spec = new TransactionSpec(gid, protocol, checkout.PayloadJson, ImmutableArray.Create(
                        Branch(Order, [(ProtocolNames.Action, "order"), (ProtocolNames.Compensate, "order")], [], false, Timeout(), null),
                        Branch(Payment, [(ProtocolNames.Action, Payment), (ProtocolNames.Compensate, Payment)], [Order], false, Timeout(),
                            _random.Next(4) == 0 ? new RetryPolicy(1 + _random.Next(3), 10, 500) : null),
                        Branch(Inventory, [(ProtocolNames.Action, Inventory), (ProtocolNames.Compensate, Inventory)], dag ? [Order] : [Payment], false, Timeout(), null),
                        Branch(Confirm, [(ProtocolNames.Action, Order)], dag ? [Payment, Inventory] : [Inventory], true, Timeout(), null)),
                        txTimeout, retry);
                    what += dag ? " dag" : "";
                    break;
                case Protocol.Msg:
                    var ordered = _more.Next(3) == 0;
                    spec = new TransactionSpec(gid, protocol, checkout.PayloadJson, ImmutableArray.Create(
                        Branch(Loyalty, [(ProtocolNames.Action, Loyalty)], [], false, Timeout(), null),
                        Branch(Ledger, [(ProtocolNames.Action, Ledger)], ordered ? [Loyalty] : [], false, Timeout(), null)),
                        _more.Next(3) switch { 0 => 100 + _more.Next(900), 1 => 500 + _more.Next(3_000), _ => null },
                        retry)
                    {
                        Urls = ImmutableSortedDictionary.CreateRange(StringComparer.Ordinal, [KeyValuePair.Create(ProtocolNames.QueryPrepared, $"sim://{Payment}/{ProtocolNames.QueryPrepared}")]),
                    };
                    break;
                default:
                    var ops = _machines.First(m => m.Protocol == protocol).Shape.BranchOperations;
                    BranchSpec Held(string name) => Branch(name, [.. ops.Select(op => (op, name))], [], false, Timeout(),
                        _random.Next(4) == 0 ? new RetryPolicy(1 + _random.Next(3), 10, 500) : null);
                    spec = new TransactionSpec(gid, protocol, checkout.PayloadJson, [Held(Order), Held(Payment), Held(Inventory)], txTimeout, retry);
                    break;
            }

            _specs.Add(spec);
            _specsByGid[gid] = spec;
            _gids.Add(gid);
            what += $" timeout={spec.TimeoutMs?.ToString(CultureInfo.InvariantCulture) ?? "-"} retry={retry.MaxAttempts}/{retry.InitialDelayMs}/{retry.MaxDelayMs}";
            if (protocol == Protocol.Msg)
            {
                var work = TimeSpan.FromMilliseconds(_more.Next(2) == 0 ? _more.Next(200) : _more.Next(4_000));
                _sender.Start(checkout, spec, at, work, $"{what} localWork={work.TotalMilliseconds:0}ms");
            }
            else
            {
                // The gid is derived from the key: key k3 is the checkout whose transaction is tx3.
                _desk.Start($"k{i + 1}", "POST /checkout " + checkout.PayloadJson, gid, at, what);
            }
        }
    }

    /// <summary>The transaction a checkout handler submits for checkout <paramref name="canonical"/> under <paramref name="gid"/>.</summary>
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

    private static BranchSpec Branch(string name, (string Op, string Service)[] ops, string[] dependsOn, bool pivot, long? timeoutMs, RetryPolicy? retry)
    {
        var urls = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        foreach (var (op, service) in ops)
        {
            urls[op] = $"sim://{service}/{op}";
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
                            (Multi ? _instances[_multi.Next(_instances.Count)].Time : _time).StepWallClock(by);
                            Trace(_control, $"CLOCK STEP +{by.TotalSeconds:0.000}s (wall clock only)");
                            break;
                        default:
                            // NTP sets the wall clock back: timers still fire on time, but what they
                            // wake finds nothing due yet and must wait for the wall clock to catch up.
                            _clockStepsBack++;
                            (Multi ? _instances[_multi.Next(_instances.Count)].Time : _time).StepWallClock(-by);
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

        // Most transactions finish within a few seconds of their start: operators who act on them
        // while they run (an abort racing the vote, a retry racing a retry) act early.
        for (var i = _more.Next(4); i > 0; i--)
        {
            var abort = _more.Next(4) != 0;
            var gid = _specs[_more.Next(_specs.Count)].Gid;
            var at = _startsAt[gid] + TimeSpan.FromMilliseconds(_more.Next(2_000));
            _scheduler.At(_control, at, () => Operator(gid, abort));
        }

        if (Multi)
        {
            SchedulePauses();
        }

        if (_options.Mode == SimMode.Partition && _more.Next(2) == 0)
        {
            var service = new[] { Order, Payment, Inventory }[_more.Next(3)];
            var at = InFaultPhase();
            _scheduler.At(_control, at, () => StartPartition(service, "at a random moment"));
        }
    }

    /// <summary>Cuts <paramref name="service"/> off from the coordinator for 4 to 15 s: longer than the participants' 3PC timeout and the coordinator's retries.</summary>
    private void StartPartition(string service, string why)
    {
        if (_partitionsLeft == 0 || !_faults.Active || _network.IsCut(service))
        {
            return;
        }

        _partitionsLeft--;
        var length = TimeSpan.FromMilliseconds(4_000 + _more.Next(11_000));
        _network.Cut(new Partition(service, _scheduler.NowTicks, _scheduler.NowTicks + length.Ticks));
        Trace(_control, $"PARTITION: {service} cut off from the coordinator for {length.TotalSeconds:0.0}s ({why})");
        _scheduler.At(_control, length, () => Trace(_control, $"partition of {service} healed"));
    }

    /// <summary>An operator's retry or abort, racing the engine (an abort past the point of no return is refused).</summary>
    private void Operator(string gid, bool abort)
    {
        var (node, engine) = Multi ? Coordinator() : (_coordinatorNode, _engine);
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
                Violation($"harness/engine threw: {ex}");
            }
        }
    }

    private void Violation(string text)
    {
        _violations.Add(text);
        Trace(_control, "VIOLATION " + text);
        _stop |= _options.StopAtFirstViolation;
    }

    private void Trace(SimNode node, string text) => _scheduler.Trace.Add(_scheduler, node.Name, text);
}
