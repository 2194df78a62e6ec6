using Treaty.Core.Model;

namespace Treaty.Core.Engine;

/// <summary>
/// Durable home of transaction state and of the append-only journal. Every write is durable when
/// its task completes (the engine acts on a decision only after that). Implementations pass the
/// shared compliance suite.
/// </summary>
public interface ITransactionStore
{
    /// <summary>Creates or migrates the schema.</summary>
    Task InitializeAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Stores a new transaction and its first journal entries atomically. Returns null when it was
    /// inserted, or the stored state when a transaction with the same gid already exists (nothing
    /// is written then).
    /// </summary>
    Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken);

    /// <summary>
    /// Replaces the stored state (whose version must be <c>state.Version - 1</c>) and appends the
    /// journal entries, atomically. Throws <see cref="ConcurrencyConflictException"/> when the
    /// stored version differs or the transaction does not exist.
    /// </summary>
    Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken);

    /// <summary>The stored state, or null.</summary>
    Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken);

    /// <summary>The journal of one transaction, oldest first.</summary>
    Task<IReadOnlyList<JournalRecord>> GetJournalAsync(string gid, CancellationToken cancellationToken);

    /// <summary>A page of transactions, newest first.</summary>
    Task<TransactionPage> ListAsync(TransactionQuery query, CancellationToken cancellationToken);

    /// <summary>How many transactions match <paramref name="query"/>'s filters, by status. The query's
    /// <see cref="TransactionQuery.Status"/>, <see cref="TransactionQuery.Limit"/> and
    /// <see cref="TransactionQuery.Cursor"/> are ignored: the counts are the dashboard's tabs.</summary>
    Task<TransactionCounts> CountAsync(TransactionQuery query, CancellationToken cancellationToken);

    /// <summary>Gids of non-terminal transactions whose <see cref="TransactionState.NextWakeAt"/> is at or
    /// before <paramref name="dueBy"/> (or unset), earliest first.</summary>
    Task<IReadOnlyList<string>> ListDueAsync(DateTimeOffset dueBy, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Deletes at most <paramref name="batchSize"/> finished transactions (committed or aborted) whose
    /// last write (<see cref="TransactionState.UpdatedAt"/>, the moment they finished) is before
    /// <paramref name="finishedBefore"/>, oldest first, with their journal rows, atomically per
    /// transaction; returns how many it deleted. A transaction that is not finished is never deleted,
    /// however old. One call is one bounded write: a caller that wants everything gone calls again
    /// until it returns less than <paramref name="batchSize"/>, pausing between calls so the hot
    /// path keeps the writer. A purged gid is unknown afterwards and may be submitted again as a new
    /// transaction: the gid's idempotency lasts as long as its row.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive.</exception>
    Task<int> PurgeFinishedAsync(DateTimeOffset finishedBefore, int batchSize, CancellationToken cancellationToken);
}

/// <summary>A stored journal entry.</summary>
public sealed record JournalRecord(long Sequence, string Gid, JournalEntry Entry);

/// <summary>Filters of a listing. <see cref="Cursor"/> is the opaque <see cref="TransactionPage.NextCursor"/> of the previous page.
/// <see cref="Since"/> is inclusive, <see cref="Until"/> exclusive (consecutive ranges do not overlap);
/// <see cref="GidContains"/> matches ordinally (case-sensitive, as gids are compared everywhere).</summary>
public sealed record TransactionQuery(
    TransactionStatus? Status = null,
    Protocol? Protocol = null,
    bool? Stuck = null,
    DateTimeOffset? Since = null,
    int Limit = 50,
    string? Cursor = null,
    DateTimeOffset? Until = null,
    string? GidContains = null)
{
    /// <summary>True when <paramref name="state"/> passes every filter but the paging (for in-memory stores).</summary>
    public bool Matches(TransactionState state, bool ignoreStatus = false)
    {
        ArgumentNullException.ThrowIfNull(state);
        return (ignoreStatus || Status is null || state.Status == Status)
            && (Protocol is null || state.Spec.Protocol == Protocol)
            && (Stuck is null || state.Stuck == Stuck)
            && (Since is null || state.CreatedAt >= Since)
            && (Until is null || state.CreatedAt < Until)
            && (string.IsNullOrEmpty(GidContains) || state.Gid.Contains(GidContains, StringComparison.Ordinal));
    }
}

/// <summary>Transactions by status, and how many of them are stuck.</summary>
public sealed record TransactionCounts(IReadOnlyDictionary<TransactionStatus, long> ByStatus, long Stuck)
{
    /// <summary>All of them.</summary>
    public long Total => ByStatus.Values.Sum();
}

/// <summary>One page of a listing.</summary>
public sealed record TransactionPage(IReadOnlyList<TransactionState> Items, string? NextCursor);

/// <summary>The stored version was not the expected one: another writer got there first.</summary>
public sealed class ConcurrencyConflictException : Exception
{
    public ConcurrencyConflictException()
    {
    }

    public ConcurrencyConflictException(string message) : base(message)
    {
    }

    public ConcurrencyConflictException(string message, Exception innerException) : base(message, innerException)
    {
    }
}
