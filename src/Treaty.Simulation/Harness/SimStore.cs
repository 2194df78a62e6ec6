using System.Globalization;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>What happens to one write at its fsync.</summary>
internal enum WriteFate
{
    /// <summary>It becomes durable and the writer carries on.</summary>
    Durable,
    /// <summary>The coordinator crashes just before it becomes durable: the write is lost.</summary>
    CrashBefore,
    /// <summary>It becomes durable, then the coordinator crashes before it can act on it.</summary>
    CrashAfter,
    /// <summary>The database reports an error and nothing was written (a busy database, a dropped connection).</summary>
    FailNotDurable,
    /// <summary>The database reports an error although the commit went through (an ambiguous commit).</summary>
    FailButDurable,
}

/// <summary>
/// An in-memory store that models durability: a write becomes durable at a completion event a small
/// random fsync delay later, in the writing coordinator's node. If that node crashed meanwhile the
/// event never runs and the write is lost. At that event <c>fate</c>, which sees the write, may
/// crash the coordinator just before or just after it, or fail it ambiguously. Reads see durable
/// data only.
/// </summary>
internal sealed class SimStore(SimScheduler scheduler, Random random, Func<TransactionState, IReadOnlyList<JournalEntry>, WriteFate> fate, Action<string> crash) : ITransactionStore
{
    private readonly Dictionary<string, TransactionState> _durable = new(StringComparer.Ordinal);
    private readonly List<JournalRecord> _journal = [];
    private readonly LeaseBook _leases = new();
    private readonly FinishWaiters _finished = new();
    private long _sequence;

    /// <summary>Writes refused because their fence was stale (another instance had claimed the transaction).</summary>
    public int FencedWrites { get; private set; }

    /// <summary>Known-bad variant: the store does not check the fence of an update (any instance may write).</summary>
    public bool IgnoreFence { get; init; }

    /// <summary>Called as a write leaves its writer, before it reaches the database (the multi-coordinator mode pauses the writer there now and then).</summary>
    public Action<SimNode, TransactionState>? Issuing { get; init; }

    /// <summary>Whether renewals that lost leases are traced and counted (the multi-coordinator mode; off elsewhere, so other modes' traces stay as they were).</summary>
    public bool TraceRenewals { get; init; }

    /// <summary>Claims of a gid whose previous holder's lease had expired (a dead, paused or slow instance's).</summary>
    public int ExpiredTakeovers { get; private set; }

    /// <summary>Claims that took a gid from a live holder (an operator action on another instance).</summary>
    public int LiveTakeovers { get; private set; }

    /// <summary>Renewals that reported a lease lost (the holder was claimed away from).</summary>
    public int RenewalsLost { get; private set; }

    /// <summary>
    /// What the store's own history says about ownership: a durable write by anyone but the lease
    /// holder at its epoch, an epoch of a gid going backwards, one epoch written by two owners.
    /// </summary>
    public List<string> OwnershipAnomalies { get; } = [];

    private readonly Dictionary<string, (long Epoch, string Owner)> _lastWriter = new(StringComparer.Ordinal);

    /// <summary>The lease holder of a gid, for invariants and traces.</summary>
    public (string? Owner, long Epoch, DateTimeOffset? Until) LeaseOf(string gid) => _leases.Peek(gid);

    public int TerminalCount { get; private set; }

    /// <summary>Durable transactions whose stored state says they are stuck (waiting for an operator).</summary>
    public int StuckCount { get; private set; }

    /// <summary>Transactions stored at all.</summary>
    public int Count => _durable.Count;

    public int Writes { get; private set; }

    public int LostWrites { get; private set; }

    public int WriteErrors { get; private set; }

    public TransactionState? Peek(string gid) => _durable.GetValueOrDefault(gid);

    public Task InitializeAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource<TransactionState?>(TaskCreationOptions.RunContinuationsAsynchronously);
        Fsync(state, journal, () =>
        {
            if (_durable.TryGetValue(state.Gid, out var existing))
            {
                done.TrySetResult(existing);
                return false;
            }

            return true;
        }, () => done.TrySetResult(null), ex => done.TrySetException(ex), lease, insert: true);
        return done.Task;
    }

    public Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Fsync(state, journal, () =>
        {
            if (!_durable.TryGetValue(state.Gid, out var stored))
            {
                done.TrySetException(new ConcurrencyConflictException($"{state.Gid}: not stored, writing v{state.Version}"));
                return false;
            }

            // The fence before the version, as every store checks them (Fence.Admits).
            if (!IgnoreFence && _leases.CheckWrite(state.Gid, fence) is { } refused)
            {
                FencedWrites++;
                Trace(SimNode.Here, $"write FENCED {state.Gid} v{state.Version}: {refused.Message}");
                done.TrySetException(refused);
                return false;
            }

            if (stored.Version != state.Version - 1)
            {
                done.TrySetException(new ConcurrencyConflictException($"{state.Gid}: stored v{stored.Version}, writing v{state.Version}"));
                return false;
            }

            return true;
        }, () => done.TrySetResult(), ex => done.TrySetException(ex), fence: fence);
        return done.Task;
    }

    // Leases are the database's: they change at once (no fsync delay modelled) and expire by the
    // scheduler's true time, whatever the coordinators' skewed clocks say.
    public Task<IReadOnlyList<LeaseClaim>> ClaimDueAsync(LeaseRequest lease, DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        var now = LeaseNow();
        var claims = _durable.Values
            .Where(s => !s.IsTerminal && (s.NextWakeAt is null || s.NextWakeAt <= dueBy) && _leases.IsFree(s.Gid, now))
            .OrderBy(s => s.NextWakeAt)
            .ThenBy(s => s.Gid, StringComparer.Ordinal)
            .Take(limit)
            .Select(s => Claim(s.Gid, lease, now, takeOver: false))
            .ToList();
        foreach (var claim in claims)
        {
            Trace(SimNode.Here, $"claim {claim.Gid} by {lease.Owner} at epoch {claim.Epoch}");
        }

        return Task.FromResult<IReadOnlyList<LeaseClaim>>(claims);
    }

    public Task<LeaseClaim?> ClaimAsync(string gid, LeaseRequest lease, bool takeOver, CancellationToken cancellationToken)
    {
        var now = LeaseNow();
        if (!_durable.TryGetValue(gid, out var state) || state.IsTerminal || !_leases.MayClaim(gid, lease, takeOver, now))
        {
            return Task.FromResult<LeaseClaim?>(null);
        }

        var claim = Claim(gid, lease, now, takeOver);
        Trace(SimNode.Here, $"claim {gid} by {lease.Owner} at epoch {claim.Epoch}{(takeOver ? " (take-over)" : "")}");
        return Task.FromResult<LeaseClaim?>(claim);
    }

    public Task<IReadOnlyList<string>> RenewAsync(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        var lost = _leases.Renew(lease, held, LeaseNow());
        if (lost.Count > 0 && TraceRenewals)
        {
            RenewalsLost += lost.Count;
            Trace(SimNode.Here, $"renewal by {lease.Owner}: LOST {string.Join(",", lost)}");
        }

        return Task.FromResult<IReadOnlyList<string>>(lost);
    }

    private DateTimeOffset LeaseNow() => scheduler.Now;

    private LeaseClaim Claim(string gid, LeaseRequest lease, DateTimeOffset now, bool takeOver)
    {
        var (holder, _, until) = _leases.Peek(gid);
        if (holder is not null && !string.Equals(holder, lease.Owner, StringComparison.Ordinal))
        {
            if (until > now)
            {
                LiveTakeovers++;
            }
            else
            {
                ExpiredTakeovers++;
            }
        }

        return _leases.Claim(gid, lease, now);
    }

    public Task ReleaseAsync(string owner, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        _leases.Release(owner, held);
        return Task.CompletedTask;
    }

    public Task WhenFinishedAsync(string gid, CancellationToken cancellationToken) => _finished.WaitAsync(gid, cancellationToken);

    private void Fsync(
        TransactionState state,
        IReadOnlyList<JournalEntry> journal,
        Func<bool> check,
        Action completed,
        Action<Exception> failed,
        LeaseRequest? lease = null,
        bool insert = false,
        Fence? fence = null)
    {
        var node = SimNode.Here;
        Issuing?.Invoke(node, state);
        var delay = TimeSpan.FromMicroseconds(100 + random.Next(3_000));
        scheduler.At(node, delay, () =>
        {
            if (!check())
            {
                return;
            }

            var what = fate(state, journal);
            if (what == WriteFate.CrashBefore)
            {
                LostWrites++;
                Trace(node, $"write LOST {state.Gid} v{state.Version} ({state.Status.ToWire()})");
                crash("at a durable-write boundary, before the write");
                return;
            }

            if (what == WriteFate.FailNotDurable)
            {
                WriteErrors++;
                Trace(node, $"write FAILED {state.Gid} v{state.Version} (not durable)");
                failed(new IOException("simulated database error"));
                return;
            }

            Audit(state.Gid, insert ? (lease is null ? null : new Fence(lease.Owner, 1)) : fence, insert);
            Write(node, state, journal);
            if (insert)
            {
                _leases.Inserted(state.Gid, lease, state.IsTerminal, scheduler.Now);
            }
            else
            {
                _leases.Written(state.Gid, state.IsTerminal);
            }

            if (state.IsTerminal)
            {
                _finished.Signal(state.Gid);
            }

            if (what == WriteFate.FailButDurable)
            {
                WriteErrors++;
                Trace(node, $"write reported FAILED {state.Gid} v{state.Version} (but durable)");
                failed(new IOException("simulated ambiguous commit"));
                return;
            }

            if (what == WriteFate.CrashAfter)
            {
                crash("at a durable-write boundary, after the write");
                return;
            }

            completed();
        });
    }

    /// <summary>Records who writes a gid under which epoch, and whether they hold its lease as the write becomes durable.</summary>
    private void Audit(string gid, Fence? fence, bool insert)
    {
        if (fence is not { } f)
        {
            return;
        }

        var (holder, epoch, _) = _leases.Peek(gid);
        if (!insert && (!string.Equals(holder, f.Owner, StringComparison.Ordinal) || epoch != f.Epoch))
        {
            OwnershipAnomalies.Add($"{gid}: durable write by {f.Owner} at epoch {f.Epoch} while the lease is {holder ?? "nobody"}'s at epoch {epoch}");
        }

        if (_lastWriter.TryGetValue(gid, out var last))
        {
            if (f.Epoch < last.Epoch)
            {
                OwnershipAnomalies.Add($"{gid}: durable write at epoch {f.Epoch} by {f.Owner} after one at epoch {last.Epoch} by {last.Owner} (epochs went backwards)");
            }
            else if (f.Epoch == last.Epoch && !string.Equals(f.Owner, last.Owner, StringComparison.Ordinal))
            {
                OwnershipAnomalies.Add($"{gid}: epoch {f.Epoch} written by two owners, {last.Owner} and {f.Owner}");
            }
        }

        _lastWriter[gid] = (Math.Max(f.Epoch, last.Epoch), f.Epoch >= last.Epoch ? f.Owner : last.Owner);
    }

    private void Write(SimNode node, TransactionState state, IReadOnlyList<JournalEntry> journal)
    {
        if (_durable.TryGetValue(state.Gid, out var before))
        {
            TerminalCount -= before.IsTerminal ? 1 : 0;
            StuckCount -= before.Stuck ? 1 : 0;
        }

        _durable[state.Gid] = state;
        TerminalCount += state.IsTerminal ? 1 : 0;
        StuckCount += state.Stuck ? 1 : 0;

        Writes++;
        var entries = new List<string>(journal.Count);
        foreach (var entry in journal)
        {
            _journal.Add(new JournalRecord(++_sequence, state.Gid, entry));
            entries.Add(Describe(entry));
        }

        Trace(node, $"durable {state.Gid} v{state.Version} {state.Status.ToWire()}{(state.Stuck ? " STUCK" : "")}: {string.Join("; ", entries)}");
    }

    private static string Describe(JournalEntry e)
    {
        var text = e.Kind;
        if (e.Branch is not null)
        {
            text += $" {e.Branch}.{e.Op}#{e.Attempt}";
        }

        if (e.StatusCode is { } code)
        {
            text += " " + code.ToString(CultureInfo.InvariantCulture);
        }

        if (e.Detail is not null)
        {
            text += $" ({e.Detail})";
        }

        return text;
    }

    private void Trace(SimNode node, string text) => scheduler.Trace.Add(scheduler, node.Name, text);

    public Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken) => Task.FromResult(Peek(gid));

    /// <summary>The durable journal of one transaction, oldest first.</summary>
    public IEnumerable<JournalRecord> JournalOf(string gid) => _journal.Where(r => r.Gid == gid);

    public Task<IReadOnlyList<JournalRecord>> GetJournalAsync(string gid, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<JournalRecord>>([.. _journal.Where(r => r.Gid == gid)]);

    public Task<TransactionPage> ListAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        var items = _durable.Values
            .Where(s => query.Matches(s))
            .OrderByDescending(s => s.CreatedAt)
            .ThenBy(s => s.Gid, StringComparer.Ordinal)
            .Take(query.Limit)
            .ToList();
        return Task.FromResult(new TransactionPage(items, null));
    }

    public Task<TransactionCounts> CountAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        var matching = _durable.Values.Where(s => query.Matches(s, ignoreStatus: true)).ToList();
        return Task.FromResult(new TransactionCounts(
            Enum.GetValues<TransactionStatus>().ToDictionary(status => status, status => (long)matching.Count(s => s.Status == status)),
            matching.Count(s => s.Stuck)));
    }

    public Task<IReadOnlyList<LeaseHolder>> ListHoldersAsync(CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<LeaseHolder>>(_leases.Holders(LeaseNow()));

    public Task<IReadOnlyList<string>> ListDueAsync(DateTimeOffset dueBy, int limit, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<string>>([.. _durable.Values
            .Where(s => !s.IsTerminal && (s.NextWakeAt is null || s.NextWakeAt <= dueBy))
            .OrderBy(s => s.NextWakeAt)
            .ThenBy(s => s.Gid, StringComparer.Ordinal)
            .Take(limit)
            .Select(s => s.Gid)]);

    /// <summary>Deletes at once (the simulation's runs never purge; the method exists for the interface).</summary>
    public Task<int> PurgeFinishedAsync(DateTimeOffset finishedBefore, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var gone = _durable.Values
            .Where(s => s.IsTerminal && s.UpdatedAt < finishedBefore)
            .OrderBy(s => s.UpdatedAt)
            .ThenBy(s => s.Gid, StringComparer.Ordinal)
            .Take(batchSize)
            .Select(s => s.Gid)
            .ToHashSet(StringComparer.Ordinal);
        foreach (var gid in gone)
        {
            StuckCount -= _durable[gid].Stuck ? 1 : 0;
            TerminalCount--;
            _durable.Remove(gid);
            _leases.Remove(gid);
        }

        _journal.RemoveAll(r => gone.Contains(r.Gid));
        return Task.FromResult(gone.Count);
    }

    public IEnumerable<TransactionState> All => _durable.Values;
}
