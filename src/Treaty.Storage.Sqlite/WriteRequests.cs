using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// One queued write. The writer applies it inside the batch's transaction under its own savepoint,
/// records the outcome, and completes the caller only after the batch has committed (is durable).
/// </summary>
internal abstract class WriteRequest(CancellationToken cancellationToken)
{
    public CancellationToken CancellationToken { get; } = cancellationToken;

    /// <summary>For logs; null when the request concerns no transaction.</summary>
    public abstract string? Gid { get; }

    /// <summary>
    /// Does the write and records its own outcome (a failed check writes nothing). Throws only for
    /// an unexpected error; the writer then rolls back to the savepoint and fails this request alone.
    /// </summary>
    public abstract void Apply(WriterConnection writer);

    /// <summary>Hands the recorded outcome to the caller; called once the batch is durable.</summary>
    public abstract void Complete();

    /// <summary>Records that this write failed on its own (its effects were rolled back).</summary>
    public abstract void SetFailed(Exception exception);

    /// <summary>Records that the caller gave up before the write was applied (nothing written).</summary>
    public abstract void SetCanceled();

    /// <summary>Fails the caller at once: the batch as a whole did not commit.</summary>
    public abstract void Fail(Exception exception);

    /// <summary>Forgets the outcome recorded by an attempt that was rolled back, before the write is applied again.</summary>
    public abstract void Reset();
}

/// <summary>A write whose caller awaits a <typeparamref name="T"/>.</summary>
internal abstract class WriteRequest<T>(CancellationToken cancellationToken) : WriteRequest(cancellationToken)
{
    // Continuations run off the writer thread so one slow caller cannot stall the next batch.
    private readonly TaskCompletionSource<T> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private T? _result;
    private Exception? _error;
    private bool _canceled;

    public Task<T> Task => _completion.Task;

    public override void Complete()
    {
        if (_canceled)
        {
            _completion.TrySetCanceled(CancellationToken);
        }
        else if (_error is not null)
        {
            _completion.TrySetException(_error);
        }
        else
        {
            _completion.TrySetResult(_result!);
        }
    }

    public override void SetFailed(Exception exception) => _error = exception;

    public override void SetCanceled() => _canceled = true;

    public override void Fail(Exception exception) => _completion.TrySetException(exception);

    public override void Reset()
    {
        _result = default;
        _error = null;
        _canceled = false;
    }

    protected void SetResult(T result) => _result = result;
}

/// <summary>Insert of a new transaction with its first journal entries, owned when a lease is asked for.</summary>
internal sealed class InsertRequest(StoredRow row, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, TimeProvider clock, CancellationToken cancellationToken)
    : WriteRequest<TransactionState?>(cancellationToken)
{
    public override string Gid => row.Gid;

    public override void Apply(WriterConnection writer)
    {
        // The lease starts when the write is made, by the store's clock.
        var owned = lease is not null && !row.Terminal;
        var inserted = writer.TryInsert(
            row,
            owned ? lease!.Owner : null,
            lease is null ? 0 : 1,
            owned ? StoredValues.Time(clock.GetUtcNow() + lease!.Duration) : null);
        if (inserted is { } id)
        {
            writer.AppendJournal(id, journal);
            SetResult(null);
            return;
        }

        SetResult(writer.ReadState(row.Gid)
            ?? throw new InvalidOperationException($"Transaction '{row.Gid}' conflicted on insert but cannot be read."));
    }
}

/// <summary>Replacement of a transaction's state at the next version, with its journal entries.</summary>
internal sealed class UpdateRequest(StoredRow row, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken)
    : WriteRequest<bool>(cancellationToken)
{
    public override string Gid => row.Gid;

    public override void Apply(WriterConnection writer)
    {
        var expected = row.Version - 1;
        if (writer.TryUpdate(row, expected, fence) is { } id)
        {
            writer.AppendJournal(id, journal);
            SetResult(true);
            return;
        }

        // Only the conflict path pays for this second look, to say which conflict it was: the fence
        // first, so a stale owner hears that it lost the transaction even after the new owner wrote.
        SetFailed(writer.ReadFence(row.Gid) switch
        {
            null => new ConcurrencyConflictException($"Transaction '{row.Gid}' does not exist."),
            var (_, owner, epoch) when !Fence.Admits(fence, owner, epoch) => new LeaseLostException(
                $"Transaction '{row.Gid}' is held by {owner ?? "nobody"} at epoch {epoch}; the write was fenced by {fence?.Owner ?? "nobody"} at epoch {fence?.Epoch ?? 0}."),
            var (version, _, _) =>
                new ConcurrencyConflictException($"Transaction '{row.Gid}' is at version {version}; the update expected {expected}."),
        });
    }
}

/// <summary>A claim of due work (<see cref="ITransactionStore.ClaimDueAsync"/>), by the store's clock.</summary>
internal sealed class ClaimDueRequest(LeaseRequest lease, long dueBy, int limit, TimeProvider clock, CancellationToken cancellationToken)
    : WriteRequest<IReadOnlyList<LeaseClaim>>(cancellationToken)
{
    public override string? Gid => null;

    public override void Apply(WriterConnection writer)
    {
        var now = clock.GetUtcNow();
        SetResult(writer.ClaimDue(lease.Owner, StoredValues.Time(now + lease.Duration), dueBy, StoredValues.Time(now), limit));
    }
}

/// <summary>A claim of one transaction (<see cref="ITransactionStore.ClaimAsync"/>).</summary>
internal sealed class ClaimRequest(string gid, LeaseRequest lease, bool takeOver, TimeProvider clock, CancellationToken cancellationToken)
    : WriteRequest<LeaseClaim?>(cancellationToken)
{
    public override string Gid => gid;

    public override void Apply(WriterConnection writer)
    {
        var now = clock.GetUtcNow();
        SetResult(writer.ClaimOne(gid, lease.Owner, StoredValues.Time(now + lease.Duration), takeOver, StoredValues.Time(now)));
    }
}

/// <summary>A renewal of held leases (<see cref="ITransactionStore.RenewAsync"/>).</summary>
internal sealed class RenewRequest(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, TimeProvider clock, CancellationToken cancellationToken)
    : WriteRequest<IReadOnlyList<string>>(cancellationToken)
{
    public override string? Gid => null;

    public override void Apply(WriterConnection writer) =>
        SetResult(writer.Renew(lease.Owner, StoredValues.Time(clock.GetUtcNow() + lease.Duration), held));
}

/// <summary>A release of held leases (<see cref="ITransactionStore.ReleaseAsync"/>).</summary>
internal sealed class ReleaseRequest(string owner, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    : WriteRequest<bool>(cancellationToken)
{
    public override string? Gid => null;

    public override void Apply(WriterConnection writer)
    {
        writer.ReleaseLeases(owner, held);
        SetResult(true);
    }
}

/// <summary>One bounded purge of finished transactions: one savepoint in a group-committed batch, so
/// it shares the writer's turn with the hot path's writes instead of holding the file.</summary>
internal sealed class PurgeRequest(long finishedBefore, int limit, CancellationToken cancellationToken)
    : WriteRequest<int>(cancellationToken)
{
    public override string? Gid => null;

    public override void Apply(WriterConnection writer) => SetResult(writer.PurgeFinished(finishedBefore, limit));
}

/// <summary>Runs a query on the writer connection inside a batch (diagnostics and tests).</summary>
internal sealed class WriterProbe<T>(Func<WriterConnection, T> query, CancellationToken cancellationToken)
    : WriteRequest<T>(cancellationToken)
{
    public override string? Gid => null;

    public override void Apply(WriterConnection writer) => SetResult(query(writer));
}
