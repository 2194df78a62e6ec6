using System.Globalization;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;

namespace Treaty.Simulation.Harness;

/// <summary>
/// The multi-coordinator mode (<see cref="SimMode.MultiCoordinator"/>): three coordinator instances,
/// each its own process (<see cref="SimNode"/>), owner name and <see cref="TransactionEngine"/>,
/// share one <see cref="SimStore"/> under leases. Each does what Treaty.Server's RecoveryService
/// does (claim what is due and nobody holds, resume it, every scan interval). Clients, senders,
/// participants in doubt and operators reach a random instance (an operator's action takes the
/// transaction over). Each instance's wall clock is off the true time by a constant (leases expire
/// by the store's clock); instances freeze for longer than a lease and then carry on with their
/// in-memory runners (a stale owner waking up mid-call: its answers arrive late, its renewals report
/// the loss, its writes are fenced); a crashed instance restarts under a new owner name, so its
/// leases must expire before anyone takes its transactions over.
/// </summary>
internal sealed partial class SimulationRun
{
    /// <summary>How long an instance's lease lasts: the pauses are 1.5 to 4 times as long.</summary>
    private static readonly TimeSpan MultiLease = TimeSpan.FromSeconds(2);

    /// <summary>How often each instance claims what is due (RecoveryService's interval).</summary>
    private static readonly TimeSpan MultiScan = TimeSpan.FromMilliseconds(500);

    /// <summary>The largest error of an instance's wall clock against the true time, either way.</summary>
    private const int MaxSkewMs = 500;

    private static readonly string[] InstanceNames = ["a", "b", "c"];

    /// <summary>The multi-coordinator mode's own stream (created in every mode, drawn from only in this one).</summary>
    private readonly Random _multi;
    private readonly List<CoordinatorInstance> _instances = [];
    private int _pauses;
    private int _midCallPausesLeft;
    private int _staleSends;
    private int _instanceCrashes;

    private bool Multi => _options.Mode == SimMode.MultiCoordinator;

    /// <summary>The coordinator a request reaches: the one there is, or a random instance (it may be down or frozen).</summary>
    private (SimNode Node, TransactionEngine Engine) Coordinator()
    {
        if (!Multi)
        {
            return (_coordinatorNode, _engine);
        }

        var instance = _instances[_multi.Next(_instances.Count)];
        return (instance.Node, instance.Engine);
    }

    /// <summary>The wall clock of the process running now: the instance's own in the multi-coordinator mode, else the shared one.</summary>
    private SimTimeProvider ClockHere() =>
        Multi && SynchronizationContext.Current is SimNode node && _instances.FirstOrDefault(i => i.Node == node) is { } instance
            ? instance.Time
            : _time;

    private void BuildInstances()
    {
        foreach (var name in InstanceNames)
        {
            var skew = TimeSpan.FromMilliseconds(_multi.Next(-MaxSkewMs, MaxSkewMs + 1));
            var instance = new CoordinatorInstance(name, new SimTimeProvider(_scheduler, _time.Skew) { Skewed = skew });
            Incarnate(instance);
            _instances.Add(instance);
        }
    }

    /// <summary>A new process for the instance: a new node, engine and owner name (the first is coord-a, a restart coord-a.2).</summary>
    private void Incarnate(CoordinatorInstance instance)
    {
        instance.Incarnation++;
        var owner = instance.Incarnation == 1
            ? $"coord-{instance.Name}"
            : $"coord-{instance.Name}.{instance.Incarnation.ToString(CultureInfo.InvariantCulture)}";
        instance.Node = new SimNode(_scheduler, owner);
        instance.Engine = new TransactionEngine(
            _store, _invoker, _machines, instance.Time, _engineRandom, NullLogger<TransactionEngine>.Instance, _observer, new LeaseRequest(owner, MultiLease))
        {
            UnsafeActBeforePersist = _options.Variant == SimVariant.ActBeforePersist,
        };
    }

    /// <summary>What Treaty.Server's RecoveryService does in one instance: claim and resume everything due that nobody holds, at start and every scan interval.</summary>
    private void StartInstance(CoordinatorInstance instance)
    {
        var (node, engine, time) = (instance.Node, instance.Engine, instance.Time);
        Trace(node, $"start ({engine.Lease.Owner}, lease {MultiLease.TotalSeconds:0.0}s, wall clock {instance.Time.Skewed.TotalMilliseconds:+0;-0;0}ms off)");
        async Task ClaimAndResume(DateTimeOffset dueBy, int limit, bool startup)
        {
            var claims = await _store.ClaimDueAsync(engine.Lease, dueBy, limit, CancellationToken.None);
            if (startup || claims.Count > 0)
            {
                Trace(node, $"recovery: resuming {claims.Count} ({string.Join(",", claims.Select(c => c.Gid))})");
            }

            await Task.WhenAll(claims.Select(c => engine.ResumeClaimedAsync(c, CancellationToken.None)));
        }

        _scheduler.At(node, TimeSpan.Zero, () => Spawn(() => ClaimAndResume(DateTimeOffset.MaxValue, 100_000, startup: true)));
        void Scan() => Spawn(async () =>
        {
            _scheduler.At(node, MultiScan, Scan);
            await ClaimAndResume(time.GetUtcNow(), 1000, startup: false);
        });
        _scheduler.At(node, MultiScan, Scan);
    }

    /// <summary>SIGKILL of one instance: the one whose write hit the fault (when a write did), else a random live one; it restarts later under a new owner name.</summary>
    private void CrashInstance(string why)
    {
        var here = SynchronizationContext.Current as SimNode;
        var instance = _instances.FirstOrDefault(i => i.Node == here);
        if (instance is null)
        {
            var alive = _instances.Where(i => i.Node.Alive).ToList();
            if (alive.Count == 0)
            {
                return;
            }

            instance = alive[_multi.Next(alive.Count)];
        }

        if (!instance.Node.Alive)
        {
            return;
        }

        _crashes++;
        _instanceCrashes++;
        instance.Node.Kill();
        Trace(instance.Node, $"CRASH ({instance.Node.Name}) {why}");
        _scheduler.At(_control, TimeSpan.FromMilliseconds(100 + _multi.Next(3_000)), () =>
        {
            // The killed engine is abandoned, not disposed; its leases run out by the store's clock.
            Incarnate(instance);
            StartInstance(instance);
        });
    }

    /// <summary>
    /// Pauses of 1.5 to 4 leases: at random moments of the fault phase, and aimed just after a
    /// transaction starts (when its instance is most likely mid-call).
    /// </summary>
    private void SchedulePauses()
    {
        _midCallPausesLeft = 2 + _multi.Next(3);
        for (var i = 1 + _multi.Next(3); i > 0; i--)
        {
            var aimed = _multi.Next(2) == 0;
            var at = aimed
                ? _startsAt[_specs[_multi.Next(_specs.Count)].Gid] + TimeSpan.FromMilliseconds(_multi.Next(1_500))
                : TimeSpan.FromTicks((long)(_multi.NextDouble() * _faultEndTicks));
            var who = _multi.Next(_instances.Count);
            var length = MultiLease * (1.5 + (2.5 * _multi.NextDouble()));
            _scheduler.At(_control, at, () => Pause(_instances[who], length));
        }
    }

    /// <summary>
    /// BUGGIFY: now and then an instance freezes right as its write or its branch call leaves, so
    /// that it wakes up mid-call after another instance took the transaction over.
    /// </summary>
    private void MaybePauseMidCall(SimNode node, string what)
    {
        if (_midCallPausesLeft == 0 || !_faults.Active || _multi.NextDouble() >= 0.3
            || _instances.FirstOrDefault(i => i.Node == node) is not { } instance)
        {
            return;
        }

        _midCallPausesLeft--;
        Pause(instance, MultiLease * (1.5 + (2.5 * _multi.NextDouble())), what);
    }

    private void Pause(CoordinatorInstance instance, TimeSpan length, string? what = null)
    {
        var node = instance.Node;
        if (!node.Alive || node.Paused)
        {
            return;
        }

        _pauses++;
        var held = _store.All.Count(s => !s.IsTerminal && _store.LeaseOf(s.Gid).Owner == node.Name);
        Trace(node, $"PAUSE ({node.Name}) for {length.TotalSeconds:0.000}s ({length / MultiLease:0.0} leases) holding {held} lease(s){(what is null ? "" : ", " + what)}");
        node.Pause(length);
        _scheduler.At(_control, length, () => Trace(node, $"{node.Name} wakes up after {length.TotalSeconds:0.000}s{(node.Alive ? "" : " (dead meanwhile)")}"));
    }

    /// <summary>The store's history of ownership: every durable write from the lease holder at its epoch, one owner per epoch, epochs never backwards.</summary>
    private void CheckOwnership()
    {
        foreach (var anomaly in _store.OwnershipAnomalies)
        {
            Violation("ownership: " + anomaly);
        }
    }

    private string MultiSummary() => string.Create(CultureInfo.InvariantCulture,
        $"instances {string.Join(" ", _instances.Select(i => $"{i.Name}({i.Time.Skewed.TotalMilliseconds:+0;-0;0}ms)"))}: {_pauses} pauses, {_instanceCrashes} crashes, {_store.ExpiredTakeovers} take-overs of expired leases, {_store.LiveTakeovers} of live ones, {_store.RenewalsLost} leases lost at renewal, {_store.FencedWrites} fenced writes, {_staleSends} calls sent by a stale owner");

    private void AddMultiStats(SimStats stats) =>
        stats.Add("multi pauses", _pauses)
            .Add("multi instance-crashes", _instanceCrashes)
            .Add("multi takeovers-expired", _store.ExpiredTakeovers)
            .Add("multi takeovers-live", _store.LiveTakeovers)
            .Add("multi renewals-lost", _store.RenewalsLost)
            .Add("multi fenced-writes", _store.FencedWrites)
            .Add("multi stale-sends", _staleSends)
            .Add("multi seeds-with-fenced-writes", _store.FencedWrites > 0 ? 1 : 0);

    /// <summary>One coordinator instance: its name, its machine's clock, and its current process.</summary>
    private sealed class CoordinatorInstance(string name, SimTimeProvider time)
    {
        public string Name { get; } = name;

        public SimTimeProvider Time { get; } = time;

        public int Incarnation { get; set; }

        public SimNode Node { get; set; } = null!;

        public TransactionEngine Engine { get; set; } = null!;
    }
}
