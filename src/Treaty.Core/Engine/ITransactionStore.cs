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

    /// <summary>Stores a new transaction that nobody owns; see the overload with a lease.</summary>
    Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        InsertAsync(state, journal, lease: null, cancellationToken);

    /// <summary>
    /// Stores a new transaction and its first journal entries atomically. Returns null when it was
    /// inserted, or the stored state when a transaction with the same gid already exists (nothing
    /// is written then). With <paramref name="lease"/>, the new transaction is owned by its owner at
    /// epoch 1 until the store's clock passes now + its duration (unless the state is terminal).
    /// </summary>
    Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, CancellationToken cancellationToken);

    /// <summary>An unfenced update; see the overload with a fence.</summary>
    Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        UpdateAsync(state, journal, fence: null, cancellationToken);

    /// <summary>
    /// Replaces the stored state (whose version must be <c>state.Version - 1</c>) and appends the
    /// journal entries, atomically. Throws <see cref="LeaseLostException"/> when <paramref name="fence"/>
    /// is not the stored owner and epoch (<see cref="Fence.Admits"/>; the lease's expiry alone does
    /// not refuse the write: only a new claim does), whatever the stored version; an unfenced write
    /// (null) is refused while the transaction has an owner. Throws <see cref="ConcurrencyConflictException"/>
    /// when the transaction does not exist, or when the fence admits the write but the stored version
    /// differs. A write of a terminal state releases the lease (no owner after it).
    /// </summary>
    Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken);

    /// <summary>
    /// Claims at most <paramref name="limit"/> non-terminal transactions that nobody holds (no owner,
    /// or a lease the store's clock says has expired) and whose <see cref="TransactionState.NextWakeAt"/>
    /// is at or before <paramref name="dueBy"/> (or unset), earliest first: each gets the owner, its
    /// epoch raised by one, and a lease until the store's now + the duration. Rows another caller is
    /// claiming at the same moment are skipped, not waited for (two callers never get one row).
    /// </summary>
    Task<IReadOnlyList<LeaseClaim>> ClaimDueAsync(LeaseRequest lease, DateTimeOffset dueBy, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Claims one non-terminal transaction whatever its wake-up time: when nobody holds it, when the
    /// owner is the caller itself, or, with <paramref name="takeOver"/>, from a live holder (an
    /// operator action on another instance's transaction; the old holder's next write is refused).
    /// Null when it does not exist, is terminal, or another owner holds a live lease and
    /// <paramref name="takeOver"/> is false.
    /// </summary>
    Task<LeaseClaim?> ClaimAsync(string gid, LeaseRequest lease, bool takeOver, CancellationToken cancellationToken);

    /// <summary>
    /// Extends to the store's now + the duration the leases the owner still holds at the given
    /// epochs, in one write; returns the gids of <paramref name="held"/> it did not renew (claimed by
    /// someone else, finished, or gone): the caller no longer drives those.
    /// </summary>
    Task<IReadOnlyList<string>> RenewAsync(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken);

    /// <summary>Gives up the leases the owner holds at the given epochs (an instance shutting down):
    /// the transactions can be claimed at once. Leases held at another epoch are left alone.</summary>
    Task ReleaseAsync(string owner, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken);

    /// <summary>
    /// Completes when a write makes <paramref name="gid"/> terminal, whichever instance sharing this
    /// store wrote it. The interest is registered before this method returns, so a caller registers,
    /// then reads the state, then awaits: a finish between the two is not missed. It is a hint (the
    /// caller reads the state again); cancel the token to drop the interest.
    /// </summary>
    Task WhenFinishedAsync(string gid, CancellationToken cancellationToken);

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

    /// <summary>
    /// The coordinator instances that hold unfinished transactions: per owner, how many it holds and
    /// the latest expiry among its leases, and whether that has passed by the store's clock (the
    /// instance stopped renewing: dead, paused or cut off). Ordered by owner. An instance that holds
    /// nothing is not listed (the store keeps no registry of instances).
    /// </summary>
    Task<IReadOnlyList<LeaseHolder>> ListHoldersAsync(CancellationToken cancellationToken);

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

/// <summary>A coordinator instance holding unfinished transactions (<see cref="ITransactionStore.ListHoldersAsync"/>).</summary>
/// <param name="Owner">Its lease owner name.</param>
/// <param name="Held">How many unfinished transactions it holds.</param>
/// <param name="LeaseUntil">The latest expiry among those leases.</param>
/// <param name="Expired">True when <paramref name="LeaseUntil"/> has passed by the store's clock: every
/// lease of the instance has run out, and any other instance may take its transactions over.</param>
public sealed record LeaseHolder(string Owner, long Held, DateTimeOffset LeaseUntil, bool Expired);

/// <summary>One page of a listing.</summary>
public sealed record TransactionPage(IReadOnlyList<TransactionState> Items, string? NextCursor);

/// <summary>The stored version was not the expected one: another writer got there first.</summary>
public class ConcurrencyConflictException : Exception
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
