using System.Collections.Concurrent;
using System.Collections.Frozen;
using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Treaty.Core.Diagnostics;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Core.Engine;

/// <summary>How a reported choreography event was taken.</summary>
public enum ReportStatus
{
    /// <summary>Recorded in the saga's timeline.</summary>
    Recorded,
    /// <summary>Its message id was recorded before: nothing changed.</summary>
    Duplicate,
    /// <summary>The gid belongs to a transaction of another protocol: nothing recorded.</summary>
    OtherProtocol,
    /// <summary>Too many concurrent writers; the reporter should try again.</summary>
    Busy,
    /// <summary>The saga already holds <see cref="TreatyDefaults.MaxChoreographyEvents"/> events: not recorded.</summary>
    Full,
}

/// <summary>The outcome of <see cref="TransactionEngine.ReportEventAsync"/> and the state after it.</summary>
public sealed record ReportResult(ReportStatus Status, TransactionState? State);

/// <summary>How a submit ended.</summary>
public enum SubmitStatus
{
    /// <summary>A new transaction was stored and started.</summary>
    Created,
    /// <summary>The gid existed with the same definition: nothing new happened.</summary>
    Existing,
    /// <summary>The gid existed with a different definition.</summary>
    Conflict,
}

/// <summary>The answer to a submit.</summary>
public sealed record SubmitResult(SubmitStatus Status, TransactionState State);

/// <summary>How an operator action ended.</summary>
public enum AdminStatus
{
    /// <summary>The action was taken.</summary>
    Accepted,
    /// <summary>No such transaction.</summary>
    NotFound,
    /// <summary>Not possible in the transaction's current state (terminal, or past its pivot).</summary>
    Refused,
}

/// <summary>The answer to an operator action.</summary>
public sealed record AdminResult(AdminStatus Status, TransactionState? State);

/// <summary>
/// Drives transactions: feeds events to the protocol's pure <c>Decide</c>, persists each decision
/// (write-ahead) and only then executes its commands. One runner per active transaction serializes
/// its events; different transactions proceed in parallel.
/// </summary>
public sealed partial class TransactionEngine : IAsyncDisposable
{
    private readonly ITransactionStore _store;
    private readonly IBranchInvoker _invoker;
    private readonly TimeProvider _time;
    private readonly IRandomSource _random;
    private readonly ILogger _logger;
    private readonly IEngineObserver _observer;
    private readonly FrozenDictionary<Protocol, IProtocolMachine> _machines;
    private readonly ConcurrentDictionary<string, Runner> _active = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Task> _resuming = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly LeaseRequest _lease;
    private readonly Lock _renewTimerLock = new();
    private ITimer? _renewTimer;
    private int _renewing;
    private int _disposed;

    public TransactionEngine(
        ITransactionStore store,
        IBranchInvoker invoker,
        IEnumerable<IProtocolMachine> machines,
        TimeProvider time,
        IRandomSource random,
        ILogger<TransactionEngine> logger,
        IEngineObserver? observer = null,
        LeaseRequest? lease = null)
    {
        _store = store;
        _invoker = invoker;
        _time = time;
        _random = random;
        _logger = logger;
        _observer = observer ?? NullEngineObserver.Instance;
        _machines = machines.ToFrozenDictionary(m => m.Protocol);
        _lease = lease ?? new LeaseRequest(LeaseDefaults.NewOwner(), LeaseDefaults.Duration);
    }

    /// <summary>Starts renewing leases when the first transaction is driven (inside the simulation,
    /// that is on the coordinator's node, so the renewals die with it).</summary>
    private void EnsureRenewing()
    {
        if (Volatile.Read(ref _renewTimer) is not null)
        {
            return;
        }

        lock (_renewTimerLock)
        {
            if (_renewTimer is null && !_stopping.IsCancellationRequested)
            {
                // Three renewals per lease, so two can fail before one expires.
                var period = _lease.Duration / 3;
                Volatile.Write(ref _renewTimer, _time.CreateTimer(static s => ((TransactionEngine)s!).OnRenewTimer(), this, period, period));
            }
        }
    }

    /// <summary>This instance's name and lease duration: every transaction it drives is leased to it.</summary>
    public LeaseRequest Lease => _lease;

    /// <summary>
    /// Test seam for the deterministic simulation only: when set, the engine executes a decision's
    /// branch calls before the decision is durable, breaking write-ahead on purpose. Never set in
    /// production code.
    /// </summary>
    internal bool UnsafeActBeforePersist { get; init; }

    /// <summary>Transactions currently held in memory.</summary>
    public int ActiveCount => _active.Count;

    /// <summary>Transactions held in memory that wait for an operator (their latest durable state is stuck).</summary>
    public int StuckCount
    {
        get
        {
            var stuck = 0;
            foreach (var runner in _active.Values)
            {
                if (runner.Current is { Stuck: true })
                {
                    stuck++;
                }
            }

            return stuck;
        }
    }

    /// <summary>The protocols registered with this engine.</summary>
    public IReadOnlyCollection<Protocol> Protocols => _machines.Keys;

    /// <summary>The machine of a protocol, or null when it is not registered.</summary>
    public IProtocolMachine? MachineFor(Protocol protocol) => _machines.GetValueOrDefault(protocol);

    /// <summary>
    /// Stores a new transaction durably and starts it. Idempotent on the gid: the same definition
    /// returns the existing transaction, a different one is a conflict.
    /// </summary>
    public async Task<SubmitResult> SubmitAsync(TransactionSpec spec, string fingerprint, CancellationToken cancellationToken)
    {
        var machine = MachineFor(spec.Protocol) ?? throw new InvalidOperationException($"Protocol {spec.Protocol} is not registered.");
        using var scope = _logger.BeginGidScope(spec.Gid);
        if (_active.TryGetValue(spec.Gid, out var running) && running.Current is { } current)
        {
            return Existing(current, fingerprint);
        }

        var now = _time.GetUtcNow();
        var created = machine.Create(spec, fingerprint, now);
        var decision = machine.Decide(created, new Submitted(), new DecisionContext(now, _random));
        var first = decision.Next with { Version = 1, ForcedWrites = 1 };
        var existing = await _store.InsertAsync(first, decision.Journal, _lease, cancellationToken);
        if (existing is not null)
        {
            return Existing(existing, fingerprint);
        }

        LogSubmitted(_logger, spec.Gid, spec.Protocol.ToWire(), spec.Branches.Length);
        _observer.Submitted(first);
        // A new transaction is the inserter's at epoch 1.
        var runner = new Runner(this, machine, first, new Fence(_lease.Owner, 1));
        if (!_active.TryAdd(spec.Gid, runner))
        {
            runner.Dispose();
            // Only the inserter reaches here for a gid, so a runner can exist only if recovery
            // loaded the row in between; it drives the transaction and we leave it to it.
            return new SubmitResult(SubmitStatus.Created, first);
        }

        await runner.StartAsync(decision.Commands);
        return new SubmitResult(SubmitStatus.Created, first);
    }

    private static SubmitResult Existing(TransactionState state, string fingerprint) =>
        new(string.Equals(state.Fingerprint, fingerprint, StringComparison.Ordinal) ? SubmitStatus.Existing : SubmitStatus.Conflict, state);

    /// <summary>The latest state: from memory if active, else from the store.</summary>
    public async Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken)
    {
        if (_active.TryGetValue(gid, out var runner) && runner.Current is { } current)
        {
            return current;
        }

        return await _store.GetAsync(gid, cancellationToken);
    }

    /// <summary>Waits until the transaction is terminal or <paramref name="timeout"/> passes; returns the latest state.</summary>
    public async Task<TransactionState?> WaitAsync(string gid, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (_active.TryGetValue(gid, out var runner))
        {
            try
            {
                return await runner.Terminal.WaitAsync(timeout, _time, cancellationToken);
            }
            catch (TimeoutException)
            {
                // fall through to the latest state
            }

            return await GetAsync(gid, cancellationToken);
        }

        // Another instance (or none yet) drives it: the store says when it finishes. Register
        // first, then read, so a finish in between is not missed.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var finished = _store.WhenFinishedAsync(gid, stop.Token);
        try
        {
            var state = await GetAsync(gid, cancellationToken);
            if (state is null || state.IsTerminal || timeout <= TimeSpan.Zero)
            {
                return state;
            }

            try
            {
                await finished.WaitAsync(timeout, _time, cancellationToken);
            }
            catch (TimeoutException)
            {
                // the latest state, whatever it is
            }

            return await GetAsync(gid, cancellationToken);
        }
        finally
        {
            // Drops the interest; the canceled task is never awaited.
            await stop.CancelAsync();
        }
    }

    /// <summary>
    /// Claims a non-terminal transaction nobody else holds, loads it from the store and drives it
    /// (recovery). Does nothing when this instance drives it already, or another holds its lease.
    /// </summary>
    public Task ResumeAsync(string gid, CancellationToken cancellationToken) =>
        ResumeCoreAsync(gid, claimed: null, takeOver: false, cancellationToken);

    /// <summary>Drives a transaction this instance has just claimed (<see cref="ITransactionStore.ClaimDueAsync"/>).</summary>
    public Task ResumeClaimedAsync(LeaseClaim claim, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(claim);
        return ResumeCoreAsync(claim.Gid, claim, takeOver: false, cancellationToken);
    }

    private async Task ResumeCoreAsync(string gid, LeaseClaim? claimed, bool takeOver, CancellationToken cancellationToken)
    {
        using var scope = _logger.BeginGidScope(gid);
        // One resume of a gid at a time in this process: a second claim would fence out the first.
        var mine = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        while (!_resuming.TryAdd(gid, mine.Task))
        {
            if (_resuming.TryGetValue(gid, out var other))
            {
                await other.WaitAsync(cancellationToken);
            }
        }

        try
        {
            if (claimed is null && _active.ContainsKey(gid))
            {
                return;
            }

            var claim = claimed ?? await _store.ClaimAsync(gid, _lease, takeOver, cancellationToken);
            if (claim is null)
            {
                return;
            }

            if (_active.TryGetValue(gid, out var stale))
            {
                // Our own runner under an older epoch (its lease lapsed and we claimed it again): it
                // can no longer write; the fresh copy below carries on from the durable state.
                Unload(stale);
            }

            var state = await _store.GetAsync(gid, cancellationToken);
            if (state is null || state.IsTerminal || MachineFor(state.Spec.Protocol) is not { } machine)
            {
                return;
            }

            var runner = new Runner(this, machine, state, _lease.FenceOf(claim));
            if (!_active.TryAdd(gid, runner))
            {
                runner.Dispose();
                return;
            }

            LogResuming(_logger, gid, state.Status.ToWire());
            _observer.Resumed(state, claim.Epoch, takeOver);
            await runner.HandleAsync(new Resumed(_lease.Owner, claim.Epoch));
        }
        finally
        {
            _resuming.TryRemove(new KeyValuePair<string, Task>(gid, mine.Task));
            mine.TrySetResult();
        }
    }

    /// <summary>
    /// Stops driving every transaction and gives their leases back, so another instance can take
    /// them over at once instead of when the leases expire (a graceful shutdown). Best effort: a
    /// lease the store did not hear about expires on its own.
    /// </summary>
    public async Task ReleaseAllAsync(CancellationToken cancellationToken)
    {
        var held = new List<LeaseClaim>();
        foreach (var runner in _active.Values)
        {
            runner.Dispose();
            held.Add(runner.Claim);
        }

        _active.Clear();
        if (held.Count > 0)
        {
            await _store.ReleaseAsync(_lease.Owner, held, cancellationToken);
        }
    }

    private void OnRenewTimer() => _ = RenewLeasesAsync();

    /// <summary>Renews the leases of every transaction this instance drives; drops those it lost.</summary>
    internal async Task RenewLeasesAsync()
    {
        if (Interlocked.Exchange(ref _renewing, 1) == 1 || _stopping.IsCancellationRequested)
        {
            return;
        }

        var held = new Dictionary<string, LeaseClaim>(StringComparer.Ordinal);
        try
        {
            foreach (var runner in _active.Values)
            {
                if (runner.Current is not null)
                {
                    held[runner.Gid] = runner.Claim;
                }
            }

            if (held.Count == 0)
            {
                return;
            }

            var lost = await _store.RenewAsync(_lease, held.Values, _stopping.Token);
            foreach (var gid in lost)
            {
                if (_active.TryGetValue(gid, out var runner) && runner.Claim == held[gid] && runner.Current is { IsTerminal: false })
                {
                    LogLeaseLost(_logger, gid, runner.Claim.Epoch);
                    _observer.LeaseLost(gid, runner.Claim.Epoch, atRenewal: true);
                    Unload(runner);
                }
            }
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
            // shutting down
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // The leases run on; every write is fenced, so an instance that cannot renew only risks
            // being fenced out later, never a double drive.
            LogRenewFailed(_logger, ex);
            _observer.RenewFailed(held.Count);
        }
        finally
        {
            Volatile.Write(ref _renewing, 0);
        }
    }

    /// <summary>Operator: retry now, restarting the retry budget of waiting operations.</summary>
    public async Task<AdminResult> RetryAsync(string gid, string actor, CancellationToken cancellationToken)
    {
        using var scope = _logger.BeginGidScope(gid);
        var result = await AdminAsync(gid, new AdminRetry(actor), static (_, s) => !s.IsTerminal, cancellationToken);
        LogOperatorAction(_logger, actor, "retry", gid, result.Status.ToString());
        return result;
    }

    /// <summary>Operator: abort (compensate) a transaction that has not passed the point of no return.</summary>
    public async Task<AdminResult> AbortAsync(string gid, string actor, string? reason, CancellationToken cancellationToken)
    {
        using var scope = _logger.BeginGidScope(gid);
        var result = await AdminAsync(gid, new AdminAbort(actor, reason), static (m, s) => m.CanAbort(s), cancellationToken);
        LogOperatorAction(_logger, actor, "abort", gid, result.Status.ToString());
        return result;
    }

    /// <summary>
    /// The two-phase message's sender committed its local transaction: deliver the registered
    /// message. Accepted only while it is <see cref="TransactionStatus.Prepared"/>.
    /// </summary>
    public async Task<AdminResult> SubmitPreparedAsync(string gid, CancellationToken cancellationToken)
    {
        using var scope = _logger.BeginGidScope(gid);
        return await AdminAsync(gid, new SenderCommitted(), static (_, s) => s.Status == TransactionStatus.Prepared, cancellationToken);
    }

    /// <summary>
    /// Records an event a service of a choreographed saga reported. The first event of an unknown
    /// gid creates the transaction; a message id already recorded changes nothing; an event after
    /// the end is recorded without changing the outcome. Refused (with the state) when the gid
    /// belongs to a transaction of another protocol.
    /// </summary>
    public async Task<ReportResult> ReportEventAsync(ChoreographyEvent @event, CancellationToken cancellationToken)
    {
        var gid = @event.CorrelationId;
        using var scope = _logger.BeginGidScope(gid);
        var machine = MachineFor(Protocol.Choreography) ?? throw new InvalidOperationException("The choreography protocol is not registered.");
        for (var tries = 0; tries < 5; tries++)
        {
            var state = await GetAsync(gid, cancellationToken);
            if (state is null)
            {
                var submitted = await SubmitAsync(ChoreographyMachine.SpecFor(gid), ChoreographyMachine.Fingerprint, cancellationToken);
                state = submitted.State;
            }

            if (state.Spec.Protocol != Protocol.Choreography)
            {
                return new ReportResult(ReportStatus.OtherProtocol, state);
            }

            var duplicate = state.Choreography?.MessageIds.Contains(@event.MessageId, StringComparer.Ordinal) == true;
            if (!duplicate && state.Choreography?.MessageIds.Length >= TreatyDefaults.MaxChoreographyEvents)
            {
                return new ReportResult(ReportStatus.Full, state);
            }

            if (!state.IsTerminal)
            {
                var result = await AdminAsync(gid, new EventReported(@event), static (_, s) => !s.IsTerminal, cancellationToken);
                if (result.Status == AdminStatus.Accepted)
                {
                    return new ReportResult(duplicate ? ReportStatus.Duplicate : ReportStatus.Recorded, result.State!);
                }

                continue; // it ended (or unloaded) meanwhile: look again
            }

            // Ended and unloaded: nothing drives it any more, so record the late event directly.
            var decision = machine.Decide(state, new EventReported(@event), new DecisionContext(_time.GetUtcNow(), _random));
            if (!decision.Changed(state))
            {
                return new ReportResult(ReportStatus.Duplicate, state);
            }

            var next = decision.Next with { Version = state.Version + 1 };
            try
            {
                await _store.UpdateAsync(next, decision.Journal, cancellationToken);
                return new ReportResult(ReportStatus.Recorded, next);
            }
            catch (ConcurrencyConflictException)
            {
                // another late event got there first; look again
            }
        }

        return new ReportResult(ReportStatus.Busy, await GetAsync(gid, cancellationToken));
    }

    /// <summary>How often an operator action looks again when the transaction slipped away under it.</summary>
    private const int AdminTries = 8;

    private async Task<AdminResult> AdminAsync(
        string gid,
        TransactionEvent @event,
        Func<IProtocolMachine, TransactionState, bool> allowed,
        CancellationToken cancellationToken)
    {
        for (var tries = 0; tries < AdminTries; tries++)
        {
            if (tries > 0)
            {
                // The runner let go meanwhile: it finished, or another instance took the transaction
                // over (an operator acting there at the same moment). Wait a little, at random, before
                // taking it back, so two instances doing the same do not take it from each other forever.
                var pause = TimeSpan.FromMilliseconds((5 << Math.Min(tries, 6)) * (0.5 + _random.NextDouble()));
                await Task.Delay(pause, _time, cancellationToken);
            }

            if (!_active.TryGetValue(gid, out var runner))
            {
                // An operator (or a service reporting an event) may reach any instance: take the
                // transaction over from whoever holds it; the old holder's next write is refused.
                await ResumeCoreAsync(gid, claimed: null, takeOver: true, cancellationToken);
                if (!_active.TryGetValue(gid, out runner))
                {
                    var stored = await _store.GetAsync(gid, cancellationToken);
                    return stored is null
                        ? new AdminResult(AdminStatus.NotFound, null)
                        : new AdminResult(AdminStatus.Refused, stored);
                }
            }

            var (handled, state) = await runner.HandleAdminAsync(@event, allowed);
            if (handled is not null)
            {
                return new AdminResult(handled.Value ? AdminStatus.Accepted : AdminStatus.Refused, state);
            }

            // The runner unloaded meanwhile; look again.
        }

        return new AdminResult(AdminStatus.Refused, await _store.GetAsync(gid, cancellationToken));
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        await _stopping.CancelAsync();
        lock (_renewTimerLock)
        {
            _renewTimer?.Dispose();
        }

        foreach (var runner in _active.Values)
        {
            runner.Dispose();
        }

        _active.Clear();
        _stopping.Dispose();
    }

    /// <summary>
    /// Sends a call nobody waits for (presumed abort's rollbacks): an unknown outcome is retried
    /// with the operation's policy while this engine runs; its outcome is never fed back.
    /// </summary>
    private async Task NotifyAsync(TransactionState state, NotifyOperation notify)
    {
        await Task.Yield();
        using var scope = _logger.BeginGidScope(state.Gid);
        for (var attempt = 1; !_stopping.IsCancellationRequested; attempt++)
        {
            var call = new BranchCall(state.Gid, notify.BranchName, notify.Op, notify.Url, attempt, state.Spec.PayloadJson, notify.Timeout);
            var started = _time.GetTimestamp();
            BranchOutcome outcome;
            try
            {
                outcome = await _invoker.InvokeAsync(call, _stopping.Token);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                outcome = BranchOutcome.Unknown(null, ex.Message);
            }

            _observer.BranchCalled(state, call, outcome, _time.GetElapsedTime(started));
            if (outcome.Kind != OutcomeKind.Unknown || attempt >= notify.Retry.MaxAttempts)
            {
                return;
            }

            try
            {
                await Task.Delay(Backoff.Delay(attempt, notify.Retry, _random.NextDouble()), _time, _stopping.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private void Unload(Runner runner)
    {
        _active.TryRemove(new KeyValuePair<string, Runner>(runner.Gid, runner));
        runner.Dispose();
    }

    /// <summary>Holds one active transaction and serializes everything that happens to it.</summary>
    private sealed class Runner : IDisposable
    {
        private readonly TransactionEngine _engine;
        private readonly IProtocolMachine _machine;
        private readonly SemaphoreSlim _gate = new(1, 1);
        private readonly TaskCompletionSource<TransactionState> _terminal = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly ITimer _timer;
        private TransactionState _state;
        // The last state the store has: what readers see. A decision written lazily is in _state
        // before it is on disk; the API must not show what a crash could still take back.
        private TransactionState _durable;
        private Task<bool> _pendingWrite = Task.FromResult(true);
        private readonly Fence _fence;
        private volatile bool _unloaded;

        public Runner(TransactionEngine engine, IProtocolMachine machine, TransactionState state, Fence fence)
        {
            _engine = engine;
            _machine = machine;
            _state = state;
            _durable = state;
            _fence = fence;
            Gid = state.Gid;
            Claim = new LeaseClaim(state.Gid, fence.Epoch);
            engine.EnsureRenewing();
            // Without the creator's execution context (a submit request's span and log scopes): the
            // timer would keep them alive as long as the transaction, and its callbacks set their own scope.
            using (ExecutionContext.SuppressFlow())
            {
                _timer = engine._time.CreateTimer(static s => ((Runner)s!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            }
        }

        public string Gid { get; }

        /// <summary>The lease this runner writes under.</summary>
        public LeaseClaim Claim { get; }

        /// <summary>The latest durable state (null once unloaded).</summary>
        public TransactionState? Current => _unloaded ? null : Volatile.Read(ref _durable);

        public Task<TransactionState> Terminal => _terminal.Task;

        /// <summary>Acts on the first decision, which the submit already persisted.</summary>
        public async Task StartAsync(IReadOnlyList<Command> commands)
        {
            using var scope = _engine._logger.BeginGidScope(Gid);
            await _gate.WaitAsync();
            try
            {
                Execute(_state, commands);
            }
            finally
            {
                _gate.Release();
            }
        }

        public async Task HandleAsync(TransactionEvent @event)
        {
            // The decision loop: timers, answers and resumes all come through here.
            using var scope = _engine._logger.BeginGidScope(Gid);
            await _gate.WaitAsync();
            try
            {
                await DecideAndPersistAsync(@event);
            }
            finally
            {
                _gate.Release();
            }
        }

        /// <summary>Null when the runner was unloaded; else whether the action was allowed, and the state after it.</summary>
        public async Task<(bool? Handled, TransactionState State)> HandleAdminAsync(
            TransactionEvent @event, Func<IProtocolMachine, TransactionState, bool> allowed)
        {
            await _gate.WaitAsync();
            try
            {
                if (_unloaded)
                {
                    return (null, _state);
                }

                if (!allowed(_machine, _state))
                {
                    return (false, _state);
                }

                var ok = await DecideAndPersistAsync(@event);
                return (ok ? true : null, _state);
            }
            finally
            {
                _gate.Release();
            }
        }

        private async Task<bool> DecideAndPersistAsync(TransactionEvent @event)
        {
            if (_unloaded || _engine._stopping.IsCancellationRequested)
            {
                return false;
            }

            var now = _engine._time.GetUtcNow();
            var decision = _machine.Decide(_state, @event, new DecisionContext(now, _engine._random));
            if (!decision.Changed(_state))
            {
                // Nothing to do yet (say, a timer that fired a hair early): wait for the same time again.
                Schedule(_state.NextWakeAt);
                return true;
            }

            // Writes of one transaction reach the store in order: a write waits for the one before it.
            if (!await PreviousWriteSucceededAsync())
            {
                return false;
            }

            var calls = decision.Commands.Any(IsCall);
            var lazy = !calls && !decision.Commands.Any(c => c is Finish) && !decision.Acknowledged && !_engine.UnsafeActBeforePersist;
            var forced = !lazy && calls && decision.WriteAhead;
            var next = decision.Next with { Version = _state.Version + 1, ForcedWrites = _state.ForcedWrites + (forced ? 1 : 0) };
            if (lazy)
            {
                // Nothing leaves the coordinator on this decision (a vote that does not complete the
                // round, an acknowledgement, a retry scheduled): nobody needs to wait for its write.
                // The next write waits for it; if it fails, that write notices and the runner
                // unloads. A crash before it lands loses only what the calls in flight will say again.
                Volatile.Write(ref _state, next);
                _pendingWrite = WriteAsync(next, decision.Journal, forced: false);
                Execute(next, decision.Commands);
                return true;
            }

            if (!decision.WriteAhead || _engine.UnsafeActBeforePersist)
            {
                // The protocol lets these calls leave before the write is durable (presumed abort),
                // or, with the test seam, the known-bad variant the simulation must catch.
                Volatile.Write(ref _state, next);
                Execute(next, decision.Commands.Where(IsCall).ToList());
                decision = decision with { Commands = [.. decision.Commands.Where(c => !IsCall(c))] };
            }

            _pendingWrite = WriteAsync(next, decision.Journal, forced);
            if (!await PreviousWriteSucceededAsync())
            {
                return false;
            }

            Volatile.Write(ref _state, next);
            Execute(next, decision.Commands);
            return true;
        }

        /// <summary>The write before this one is durable; false (and the runner unloaded) when it failed.</summary>
        private async Task<bool> PreviousWriteSucceededAsync()
        {
            if (await _pendingWrite)
            {
                return true;
            }

            // Not durable, so nothing was acted on because of it. Drop the in-memory copy; recovery
            // reloads the durable state and carries on from there.
            _unloaded = true;
            _engine.Unload(this);
            return false;
        }

        /// <summary>Writes a decision; false when the store refused or failed it (logged).</summary>
        private async Task<bool> WriteAsync(TransactionState next, ImmutableArray<JournalEntry> journal, bool forced)
        {
            try
            {
                await _engine._store.UpdateAsync(next, journal, _fence, _engine._stopping.Token);
            }
            catch (LeaseLostException)
            {
                // Another instance claimed it (this one paused past its lease, or an operator acted
                // there): it drives the transaction now, from the durable state.
                LogLeaseLost(_engine._logger, Gid, _fence.Epoch);
                _engine._observer.LeaseLost(Gid, _fence.Epoch, atRenewal: false);
                return false;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                if (!_engine._stopping.IsCancellationRequested)
                {
                    LogPersistFailed(_engine._logger, ex, Gid);
                }

                return false;
            }

            // Writes of one runner complete in order (each waits for the one before it), so the
            // durable state replaced here is the decision's predecessor.
            var previous = Volatile.Read(ref _durable);
            Volatile.Write(ref _durable, next);
            _engine._observer.Persisted(next, forced);
            if (previous.Outcome is null && next.Outcome is { } outcome)
            {
                LogDecided(_engine._logger, Gid, outcome.ToWire(), next.Reason ?? "-");
            }

            _engine._observer.Decided(previous, next);
            if (previous.Stuck != next.Stuck)
            {
                if (!next.Stuck)
                {
                    LogUnstuck(_engine._logger, Gid);
                }

                _engine._observer.StuckChanged(next, next.Stuck);
            }

            return true;
        }

        private static bool IsCall(Command command) => command is InvokeOperation or NotifyOperation;

        private void Execute(TransactionState state, IReadOnlyList<Command> commands)
        {
            foreach (var command in commands)
            {
                switch (command)
                {
                    case InvokeOperation invoke:
                        // Calls start on a clean execution context (they set their own gid scope and
                        // span): one waiting on a busy participant must not keep the request that
                        // decided it (its span, its log scopes) alive.
                        using (ExecutionContext.SuppressFlow())
                        {
                            _ = InvokeAsync(state, invoke);
                        }

                        break;
                    case NotifyOperation notify:
                        using (ExecutionContext.SuppressFlow())
                        {
                            _ = _engine.NotifyAsync(state, notify);
                        }

                        break;
                    case Finish finish:
                        LogFinished(_engine._logger, Gid, finish.Status.ToWire());
                        _engine._observer.Finished(state);
                        _unloaded = true;
                        _terminal.TrySetResult(state);
                        _engine.Unload(this);
                        break;
                    case Alert alert:
                        LogAlert(_engine._logger, Gid, alert.Kind, alert.Message);
                        _engine._observer.Alert(state, alert);
                        break;
                }
            }

            if (!_unloaded)
            {
                Schedule(state.NextWakeAt);
            }
        }

        private void Schedule(DateTimeOffset? wakeAt)
        {
            if (wakeAt is not { } at)
            {
                _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                return;
            }

            // System timers truncate to whole milliseconds and could fire just before the due time:
            // round up. (A wake-up that still comes early finds nothing due and re-arms.)
            var due = at - _engine._time.GetUtcNow();
            due = due <= TimeSpan.Zero ? TimeSpan.Zero : TimeSpan.FromMilliseconds(Math.Ceiling(due.TotalMilliseconds));

            // ITimer limits due times to about 49 days; a longer wait is re-armed when it fires.
            var max = TimeSpan.FromDays(30);
            _timer.Change(due > max ? max : due, Timeout.InfiniteTimeSpan);
        }

        private void OnTimer() => _ = HandleSafelyAsync(new TimerFired());

        private async Task InvokeAsync(TransactionState state, InvokeOperation invoke)
        {
            // Leave the caller's gate before doing I/O.
            await Task.Yield();
            using var scope = _engine._logger.BeginGidScope(Gid);
            BranchOutcome outcome;
            var op = invoke.Branch is { } branch ? state.Branches[branch].Op(invoke.Op) : state.TransactionOp(invoke.Op);
            var call = new BranchCall(Gid, invoke.BranchName, invoke.Op, invoke.Url, invoke.Attempt, state.Spec.PayloadJson, invoke.Timeout)
            {
                StartedAt = op?.LastAttemptAt,
            };
            var started = _engine._time.GetTimestamp();
            try
            {
                outcome = await _engine._invoker.InvokeAsync(call, _engine._stopping.Token);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                outcome = BranchOutcome.Unknown(null, ex.Message);
            }

            var elapsed = _engine._time.GetElapsedTime(started);
            outcome = outcome with { Duration = elapsed };
            _engine._observer.BranchCalled(state, call, outcome, elapsed);
            await HandleSafelyAsync(new OperationCompleted(invoke.Branch, invoke.Op, invoke.Attempt, outcome));
        }

        private async Task HandleSafelyAsync(TransactionEvent @event)
        {
            try
            {
                await HandleAsync(@event);
            }
            catch (ObjectDisposedException)
            {
                // unloaded while the event was on its way; the durable state is what counts.
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                LogHandleFailed(_engine._logger, ex, Gid);
            }
        }

        public void Dispose()
        {
            _unloaded = true;
            _timer.Dispose();
        }
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Information, Message = "Resuming transaction {Gid} ({Status})")]
    private static partial void LogResuming(ILogger logger, string gid, string status);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Debug, Message = "Transaction {Gid} finished: {Status}")]
    private static partial void LogFinished(ILogger logger, string gid, string status);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Warning, Message = "Transaction {Gid} alert {Kind}: {Message}")]
    private static partial void LogAlert(ILogger logger, string gid, string kind, string message);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Warning, Message = "Persisting a decision of {Gid} failed; it will be recovered from the store")]
    private static partial void LogPersistFailed(ILogger logger, Exception exception, string gid);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Error, Message = "Handling an event of {Gid} failed")]
    private static partial void LogHandleFailed(ILogger logger, Exception exception, string gid);

    [LoggerMessage(EventId = 1006, Level = LogLevel.Debug, Message = "Transaction {Gid} submitted ({Protocol}, {Branches} branches)")]
    private static partial void LogSubmitted(ILogger logger, string gid, string protocol, int branches);

    [LoggerMessage(EventId = 1007, Level = LogLevel.Debug, Message = "Transaction {Gid} decided: {Outcome} (reason: {Reason})")]
    private static partial void LogDecided(ILogger logger, string gid, string outcome, string reason);

    [LoggerMessage(EventId = 1008, Level = LogLevel.Information, Message = "Transaction {Gid} is no longer stuck")]
    private static partial void LogUnstuck(ILogger logger, string gid);

    [LoggerMessage(EventId = 1009, Level = LogLevel.Information, Message = "Operator {Actor} asked to {Action} transaction {Gid}: {Result}")]
    private static partial void LogOperatorAction(ILogger logger, string actor, string action, string gid, string result);

    [LoggerMessage(EventId = 1010, Level = LogLevel.Information, Message = "Transaction {Gid}: another instance holds it now (our epoch {Epoch}); this one stops driving it")]
    private static partial void LogLeaseLost(ILogger logger, string gid, long epoch);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Warning, Message = "Renewing leases failed; they run on until they expire")]
    private static partial void LogRenewFailed(ILogger logger, Exception exception);
}

/// <summary>Hooks for metrics and tests; called after the decision is durable.</summary>
public interface IEngineObserver
{
    void Submitted(TransactionState state);

    /// <summary>A decision after the first was written; <paramref name="forced"/> when its calls
    /// waited for the write (write-ahead), false when nothing waited for it.</summary>
    void Persisted(TransactionState state, bool forced)
    {
    }

    void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration);

    void Finished(TransactionState state);

    void Alert(TransactionState state, Alert alert);

    /// <summary>A decision after the first is durable: <paramref name="previous"/> is the durable
    /// state it replaced. An outcome set for the first time is the coordinator's decision (commit or
    /// abort); a move to <see cref="TransactionStatus.Aborting"/> starts the compensations.</summary>
    void Decided(TransactionState previous, TransactionState next)
    {
    }

    /// <summary>The transaction started (<paramref name="stuck"/> true) or stopped waiting for an operator.</summary>
    void StuckChanged(TransactionState state, bool stuck)
    {
    }

    /// <summary>
    /// This instance took a transaction over from the store and drives it now, under the claim's
    /// <paramref name="epoch"/>: recovery (after a crash, or from a peer whose lease ran out or
    /// that gave it up at shutdown), or, when <paramref name="takeOver"/>, an operator's action
    /// here while another instance held it. <paramref name="state"/> is the durable state it
    /// resumes from.
    /// </summary>
    void Resumed(TransactionState state, long epoch, bool takeOver)
    {
    }

    /// <summary>
    /// This instance stopped driving <paramref name="gid"/>: another one holds it now. Found by a
    /// lease renewal (<paramref name="atRenewal"/>) or by a write the store fenced off (this one
    /// paused past its lease, or an operator acted on another instance).
    /// </summary>
    void LeaseLost(string gid, long epoch, bool atRenewal)
    {
    }

    /// <summary>Renewing the leases of the <paramref name="held"/> transactions this instance
    /// drives failed (the store did not answer); they run on until they expire.</summary>
    void RenewFailed(int held)
    {
    }
}

internal sealed class NullEngineObserver : IEngineObserver
{
    public static NullEngineObserver Instance { get; } = new();

    public void Submitted(TransactionState state)
    {
    }

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
    }

    public void Finished(TransactionState state)
    {
    }

    public void Alert(TransactionState state, Alert alert)
    {
    }
}
