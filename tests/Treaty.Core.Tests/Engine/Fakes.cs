using System.Collections.Concurrent;
using System.Threading.Channels;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Tests.Engine;

/// <summary>One ordered record of what the store wrote and what the invoker was asked, across threads.</summary>
internal sealed class Timeline
{
    private readonly ConcurrentQueue<string> _entries = new();

    public void Add(string entry) => _entries.Enqueue(entry);

    public IReadOnlyList<string> Entries => [.. _entries];

    public int IndexOf(string entry)
    {
        var entries = Entries;
        for (var i = 0; i < entries.Count; i++)
        {
            if (entries[i] == entry)
            {
                return i;
            }
        }

        throw new InvalidOperationException($"'{entry}' is not in the timeline: {string.Join(" | ", entries)}");
    }
}

/// <summary>An in-memory <see cref="ITransactionStore"/> with hooks to delay or fail writes.</summary>
internal sealed class InMemoryTransactionStore(Timeline timeline, TimeProvider? clock = null) : ITransactionStore
{
    private readonly TimeProvider _clock = clock ?? TimeProvider.System;
    private readonly LeaseBook _leases = new();
    private readonly FinishWaiters _finished = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<string, TransactionState> _states = new(StringComparer.Ordinal);
    private readonly List<JournalRecord> _journal = [];
    private readonly List<(string Gid, Func<TransactionState, bool> Predicate, TaskCompletionSource<TransactionState> Done)> _waiters = [];
    private long _sequence;

    /// <summary>Runs before every update is applied: may wait (to hold the write) or throw (to fail it).</summary>
    public Func<TransactionState, Task>? BeforeUpdate { get; set; }

    public int Inserts { get; private set; }

    public int Updates { get; private set; }

    public Task InitializeAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        InsertAsync(state, journal, lease: null, cancellationToken);

    public Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        UpdateAsync(state, journal, fence: null, cancellationToken);

    public Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (_states.TryGetValue(state.Gid, out var existing))
            {
                return Task.FromResult<TransactionState?>(existing);
            }

            Inserts++;
            Write(state, journal);
            _leases.Inserted(state.Gid, lease, state.IsTerminal, _clock.GetUtcNow());
            timeline.Add($"insert v{state.Version}");
        }

        Notify(state);
        return Task.FromResult<TransactionState?>(null);
    }

    public async Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken)
    {
        if (BeforeUpdate is { } hook)
        {
            await hook(state);
        }

        lock (_lock)
        {
            if (!_states.TryGetValue(state.Gid, out var stored))
            {
                throw new ConcurrencyConflictException($"{state.Gid}: not stored, writing v{state.Version}");
            }

            // The fence before the version, as every store checks them (Fence.Admits).
            if (_leases.CheckWrite(state.Gid, fence) is { } refused)
            {
                timeline.Add($"fenced v{state.Version}");
                throw refused;
            }

            if (stored.Version != state.Version - 1)
            {
                throw new ConcurrencyConflictException($"{state.Gid}: stored v{stored.Version}, writing v{state.Version}");
            }

            Updates++;
            Write(state, journal);
            _leases.Written(state.Gid, state.IsTerminal);
            timeline.Add($"update v{state.Version}");
        }

        Notify(state);
    }

    /// <summary>Runs before every read: may wait (to hold the read).</summary>
    public Func<string, Task>? BeforeGet { get; set; }

    public async Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken)
    {
        if (BeforeGet is { } hook)
        {
            await hook(gid);
        }

        return Peek(gid);
    }

    /// <summary>The durable state right now.</summary>
    public TransactionState? Peek(string gid)
    {
        lock (_lock)
        {
            return _states.GetValueOrDefault(gid);
        }
    }

    public Task<IReadOnlyList<JournalRecord>> GetJournalAsync(string gid, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<JournalRecord>>([.. _journal.Where(r => r.Gid == gid)]);
        }
    }

    public Task<TransactionPage> ListAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var items = _states.Values
                .Where(s => query.Matches(s))
                .OrderByDescending(s => s.CreatedAt)
                .Take(query.Limit)
                .ToList();
            return Task.FromResult(new TransactionPage(items, null));
        }
    }

    public Task<TransactionCounts> CountAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var matching = _states.Values.Where(s => query.Matches(s, ignoreStatus: true)).ToList();
            return Task.FromResult(new TransactionCounts(
                Enum.GetValues<TransactionStatus>().ToDictionary(status => status, status => (long)matching.Count(s => s.Status == status)),
                matching.Count(s => s.Stuck)));
        }
    }

    public Task<IReadOnlyList<LeaseHolder>> ListHoldersAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<LeaseHolder>>(_leases.Holders(_clock.GetUtcNow()));
        }
    }

    public Task<IReadOnlyList<string>> ListDueAsync(DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<string>>([.. _states.Values
                .Where(s => !s.IsTerminal && (s.NextWakeAt is null || s.NextWakeAt <= dueBy))
                .OrderBy(s => s.NextWakeAt)
                .Take(limit)
                .Select(s => s.Gid)]);
        }
    }

    public Task<int> PurgeFinishedAsync(DateTimeOffset finishedBefore, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        lock (_lock)
        {
            var gone = _states.Values
                .Where(s => s.IsTerminal && s.UpdatedAt < finishedBefore)
                .OrderBy(s => s.UpdatedAt)
                .Take(batchSize)
                .Select(s => s.Gid)
                .ToHashSet(StringComparer.Ordinal);
            foreach (var gid in gone)
            {
                _states.Remove(gid);
                _leases.Remove(gid);
            }

            _journal.RemoveAll(r => gone.Contains(r.Gid));
            return Task.FromResult(gone.Count);
        }
    }

    public Task<IReadOnlyList<LeaseClaim>> ClaimDueAsync(LeaseRequest lease, DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var now = _clock.GetUtcNow();
            return Task.FromResult<IReadOnlyList<LeaseClaim>>([.. _states.Values
                .Where(s => !s.IsTerminal && (s.NextWakeAt is null || s.NextWakeAt <= dueBy) && _leases.IsFree(s.Gid, now))
                .OrderBy(s => s.NextWakeAt)
                .Take(limit)
                .Select(s => _leases.Claim(s.Gid, lease, now))]);
        }
    }

    public Task<LeaseClaim?> ClaimAsync(string gid, LeaseRequest lease, bool takeOver, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var now = _clock.GetUtcNow();
            return Task.FromResult(_states.TryGetValue(gid, out var state) && !state.IsTerminal && _leases.MayClaim(gid, lease, takeOver, now)
                ? _leases.Claim(gid, lease, now)
                : null);
        }
    }

    /// <summary>When set, a renewal throws it (the store did not answer).</summary>
    public Exception? RenewFailure { get; set; }

    public Task<IReadOnlyList<string>> RenewAsync(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        if (RenewFailure is { } failure)
        {
            return Task.FromException<IReadOnlyList<string>>(failure);
        }

        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<string>>(_leases.Renew(lease, held, _clock.GetUtcNow()));
        }
    }

    public Task ReleaseAsync(string owner, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _leases.Release(owner, held);
        }

        return Task.CompletedTask;
    }

    public Task WhenFinishedAsync(string gid, CancellationToken cancellationToken) => _finished.WaitAsync(gid, cancellationToken);

    /// <summary>The lease holder of a gid right now.</summary>
    public (string? Owner, long Epoch, DateTimeOffset? Until) LeaseOf(string gid)
    {
        lock (_lock)
        {
            return _leases.Peek(gid);
        }
    }

    /// <summary>Completes when the durable state of <paramref name="gid"/> satisfies <paramref name="predicate"/>.</summary>
    public Task<TransactionState> WaitForAsync(string gid, Func<TransactionState, bool> predicate)
    {
        lock (_lock)
        {
            if (_states.TryGetValue(gid, out var state) && predicate(state))
            {
                return Task.FromResult(state);
            }

            var done = new TaskCompletionSource<TransactionState>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((gid, predicate, done));
            return done.Task.WaitAsync(EngineTests.Timeout);
        }
    }

    private void Write(TransactionState state, IReadOnlyList<JournalEntry> journal)
    {
        _states[state.Gid] = state;
        foreach (var entry in journal)
        {
            _journal.Add(new JournalRecord(++_sequence, state.Gid, entry));
        }
    }

    private void Notify(TransactionState state)
    {
        if (state.IsTerminal)
        {
            _finished.Signal(state.Gid);
        }

        List<TaskCompletionSource<TransactionState>> ready = [];
        lock (_lock)
        {
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Gid == state.Gid && _waiters[i].Predicate(state))
                {
                    ready.Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }

        foreach (var done in ready)
        {
            done.TrySetResult(state);
        }
    }
}

/// <summary>A call the test answers by hand.</summary>
internal sealed class PendingCall(BranchCall call, TransactionState? durable)
{
    private readonly TaskCompletionSource<BranchOutcome> _outcome = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public BranchCall Call { get; } = call;

    /// <summary>What the store held when the invoker was called.</summary>
    public TransactionState? DurableAtInvoke { get; } = durable;

    public Task<BranchOutcome> Outcome => _outcome.Task;

    public string Name => $"{Call.Branch}.{Call.Op}#{Call.Attempt}";

    public void Succeed() => _outcome.TrySetResult(BranchOutcome.Success(200, """{"done":true}"""));

    public void Fail() => _outcome.TrySetResult(BranchOutcome.Failure(409, "declined"));

    public void Unknown() => _outcome.TrySetResult(BranchOutcome.Unknown(503, "unavailable"));
}

/// <summary>A branch invoker whose calls wait until the test answers them.</summary>
internal sealed class ScriptedBranchInvoker(InMemoryTransactionStore store, Timeline timeline) : IBranchInvoker
{
    private readonly Channel<PendingCall> _calls = Channel.CreateUnbounded<PendingCall>();
    private readonly ConcurrentQueue<PendingCall> _received = new();

    public IReadOnlyList<PendingCall> Received => [.. _received];

    public Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken)
    {
        var pending = new PendingCall(call, store.Peek(call.Gid));
        timeline.Add($"invoke {pending.Name}");
        _received.Enqueue(pending);
        _calls.Writer.TryWrite(pending);
        return pending.Outcome.WaitAsync(cancellationToken);
    }

    /// <summary>The next call the engine makes (in the order it made them).</summary>
    public async Task<PendingCall> NextCallAsync() => await _calls.Reader.ReadAsync().AsTask().WaitAsync(EngineTests.Timeout);

    public bool HasWaitingCall => _calls.Reader.Count > 0;
}

/// <summary>Records what the engine reports.</summary>
internal sealed class RecordingObserver : IEngineObserver
{
    public ConcurrentQueue<Alert> Alerts { get; } = new();

    public ConcurrentQueue<TransactionState> FinishedStates { get; } = new();

    public void Submitted(TransactionState state)
    {
    }

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
    }

    public void Finished(TransactionState state) => FinishedStates.Enqueue(state);

    public void Alert(TransactionState state, Alert alert) => Alerts.Enqueue(alert);

    /// <summary>Every durable decision after the submit: (previous, next).</summary>
    public ConcurrentQueue<(TransactionState Previous, TransactionState Next)> Decisions { get; } = new();

    /// <summary>Every change of the stuck flag, in order.</summary>
    public ConcurrentQueue<bool> StuckChanges { get; } = new();

    public void Decided(TransactionState previous, TransactionState next) => Decisions.Enqueue((previous, next));

    public void StuckChanged(TransactionState state, bool stuck) => StuckChanges.Enqueue(stuck);

    /// <summary>Every take-over from the store: (gid, status resumed from, epoch, by an operator).</summary>
    public ConcurrentQueue<(string Gid, TransactionStatus Status, long Epoch, bool TakeOver)> Resumes { get; } = new();

    /// <summary>Every lease lost: (gid, the lost epoch, found at a renewal).</summary>
    public ConcurrentQueue<(string Gid, long Epoch, bool AtRenewal)> LeasesLost { get; } = new();

    /// <summary>The held counts of the renewals that failed.</summary>
    public ConcurrentQueue<int> RenewFailures { get; } = new();

    public void Resumed(TransactionState state, long epoch, bool takeOver) => Resumes.Enqueue((state.Gid, state.Status, epoch, takeOver));

    public void LeaseLost(string gid, long epoch, bool atRenewal) => LeasesLost.Enqueue((gid, epoch, atRenewal));

    public void RenewFailed(int held) => RenewFailures.Enqueue(held);
}
