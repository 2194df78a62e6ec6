using System.Data;
using System.Data.Common;
using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>
/// Builds a two-phase message: a sender commits its own business change and the message that
/// announces it atomically, without an outbox table of its own. The message's branches receive the
/// payload (their <c>action</c>) after the sender committed; a branch with <c>dependsOn</c> is
/// delivered after those branches, the others at once.
/// </summary>
/// <remarks>
/// <see cref="ExecuteAsync"/> does it all around the sender's local transaction. By hand:
/// <see cref="TransactionBuilder{TSelf}.SubmitAsync"/> registers the message (<c>prepared</c>,
/// nothing delivered); your local transaction ends with <see cref="TreatyMessages.MarkCommittedAsync"/>
/// and commits; then <see cref="TreatyClient.SubmitPreparedAsync"/> starts the delivery. If the
/// submit never comes, the coordinator asks <c>queryPrepared</c> (see
/// <see cref="TreatyMessages.QueryPreparedAsync"/>).
/// </remarks>
/// <example>
/// <code>
/// var sent = await client.Message($"order-placed-{orderId}")
///     .WithQueryPrepared("http://orders:8080/treaty/query-prepared")
///     .WithPayload(order, MyJsonContext.Default.Order)
///     .Branch("billing", "http://billing/on-order-placed")
///     .Branch("shipping", "http://shipping/on-order-placed")
///     .ExecuteAsync(connection, async (tx, ct) =>
///     {
///         await using var insert = connection.CreateCommand();
///         insert.Transaction = tx;
///         insert.CommandText = "INSERT INTO orders (id, status) VALUES (@id, 'placed')";
///         // parameters ...
///         await insert.ExecuteNonQueryAsync(ct);
///     }, cancellationToken: cancellationToken);
/// </code>
/// </example>
public sealed class MessageBuilder : TransactionBuilder<MessageBuilder>
{
    private string? _queryPrepared;

    internal MessageBuilder(TreatyClient? client, string? gid)
        : base(client, gid)
    {
    }

    /// <summary>Creates a builder that is not bound to a client: use <see cref="TransactionBuilder{TSelf}.Build"/> and submit it yourself.</summary>
    /// <param name="gid">The message id; null lets the coordinator generate one.</param>
    public MessageBuilder(string? gid = null)
        : this(null, gid)
    {
    }

    private protected override string Protocol => ProtocolNames.Msg;

    private protected override string Noun => "message";

    private protected override string FactoryName => nameof(TreatyClient.Message);

    /// <summary>Sets the sender's URL that the coordinator asks whether the local transaction
    /// committed (required: the coordinator refuses a message without one).</summary>
    /// <param name="url">Absolute URL of an endpoint that answers with
    /// <see cref="TreatyMessages.QueryPreparedAsync"/>: 2xx when committed, 409 when rolled back.</param>
    public MessageBuilder WithQueryPrepared(string url)
    {
        _queryPrepared = RequireUrl(url, nameof(url));
        return this;
    }

    /// <summary>Sets the <c>queryPrepared</c> URL from a <see cref="Uri"/>.</summary>
    /// <inheritdoc cref="WithQueryPrepared(string)" path="/param"/>
    public MessageBuilder WithQueryPrepared(Uri url) => WithQueryPrepared(RequireUrl(url, nameof(url)));

    /// <summary>Adds a branch: a receiver of the message.</summary>
    /// <param name="name">Unique branch name (letters, digits, '-', '_', '.', ':').</param>
    /// <param name="action">Absolute URL that receives the message. It is retried until it answers
    /// 2xx: a committed message cannot be refused.</param>
    /// <param name="dependsOn">Branches delivered first. Null or empty: none (delivered at once).</param>
    /// <param name="timeout">How long one call of this branch may take.</param>
    /// <param name="retry">Retry settings of this branch, overriding the transaction's.</param>
    public MessageBuilder Branch(string name, string action, IEnumerable<string>? dependsOn = null, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        AddBranch(name, () => new BranchRequest
        {
            Action = RequireUrl(action, nameof(action)),
            DependsOn = dependsOn is null ? null : [.. dependsOn],
        }, timeout, retry);

    /// <summary>Adds a branch with a <see cref="Uri"/> address.</summary>
    /// <inheritdoc cref="Branch(string, string, IEnumerable{string}?, TimeSpan?, RetrySettings?)" path="/param"/>
    public MessageBuilder Branch(string name, Uri action, IEnumerable<string>? dependsOn = null, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        Branch(name, RequireUrl(action, nameof(action)), dependsOn, timeout, retry);

    /// <summary>
    /// Sends the message atomically with the sender's local transaction: registers it with the
    /// coordinator (<c>prepared</c>), begins a transaction on <paramref name="connection"/>, runs
    /// <paramref name="localWork"/>, writes the message's <c>committed</c> marker in the same
    /// transaction (<see cref="TreatyMessages.MarkCommittedAsync"/>), commits, and submits the message
    /// (<c>POST /api/v1/transactions/{gid}/submit</c>).
    /// </summary>
    /// <remarks>
    /// <para>Returns if and only if the local transaction committed; the result says whether the
    /// submit got through. A submit that fails after the commit is not an error: the coordinator asks
    /// <c>queryPrepared</c> once the message's timeout passes, finds the marker, and delivers
    /// (<see cref="MessageSendStatus.SubmitPending"/>). Cancelling after the commit does the same.</para>
    /// <para>Throws when it did not commit: nothing is delivered. If <paramref name="localWork"/>
    /// throws, the local transaction is rolled back and the exception rethrown; the coordinator learns
    /// "rolled back" from <c>queryPrepared</c> and aborts the message. If the commit itself throws, its
    /// outcome may be unknown; <c>queryPrepared</c> reads the truth from the marker either way.</para>
    /// <para>Call it once per gid: the marker makes a second run with the same gid fail instead of
    /// applying the business change twice.</para>
    /// </remarks>
    /// <param name="connection">The sender's database (SQLite or PostgreSQL), the same one its
    /// <c>queryPrepared</c> endpoint reads; opened (and closed again) if it is closed, and not inside a
    /// transaction.</param>
    /// <param name="localWork">The business change. Run every command with the given transaction.</param>
    /// <param name="wait">Hold the submit's answer until delivery ends or this much time passes.</param>
    /// <param name="isolationLevel">The local transaction's isolation level. Unspecified: the
    /// provider's default (PostgreSQL: read committed; Microsoft.Data.Sqlite: <c>BEGIN IMMEDIATE</c>,
    /// which takes SQLite's write lock at once, so a <c>queryPrepared</c> that arrives meanwhile waits
    /// for this transaction's outcome). Microsoft.Data.Sqlite begins a deferred transaction for
    /// <see cref="IsolationLevel.ReadUncommitted"/>.</param>
    /// <param name="cancellationToken">Cancels the work up to the commit; afterwards only the submit.</param>
    /// <exception cref="InvalidOperationException">The builder has no client; the message is already
    /// registered in another state than <c>prepared</c> (submitted or aborted: use a new gid); or its
    /// marker exists (see <see cref="TreatyMessages.MarkCommittedAsync"/>).</exception>
    /// <exception cref="TreatyApiException">The coordinator refused the registration (e.g. 400).</exception>
    /// <exception cref="NotSupportedException">The connection is neither SQLite nor PostgreSQL.</exception>
    public async Task<MessageSendResult> ExecuteAsync(
        DbConnection connection,
        Func<DbTransaction, CancellationToken, Task> localWork,
        TimeSpan? wait = null,
        IsolationLevel isolationLevel = IsolationLevel.Unspecified,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(localWork);
        var client = RequireClient();
        var dialect = TreatyMessages.DialectOf(connection);
        var request = Build();
        var opened = await TreatyMessages.OpenAsync(connection, cancellationToken).ConfigureAwait(false);
        try
        {
            await TreatyMessages.CreateTableAsync(connection, dialect, cancellationToken).ConfigureAwait(false);
            var registered = await client.SubmitAsync(request, wait: null, cancellationToken).ConfigureAwait(false);
            if (registered.Status != TransactionStatus.Prepared.ToWire())
            {
                throw new InvalidOperationException(
                    $"Message '{registered.Gid}' is {registered.Status}, not prepared: it was submitted or aborted before. Its local work is not run again; use a new gid for a new message.");
            }

            await CommitLocallyAsync(connection, isolationLevel, registered.Gid, localWork, cancellationToken).ConfigureAwait(false);
            return await SubmitAfterCommitAsync(client, registered, wait, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (opened)
            {
                await connection.CloseAsync().ConfigureAwait(false);
            }
        }
    }

    private protected override void Complete(SubmitTransactionRequest request) => request.QueryPrepared = _queryPrepared;

    private static async Task CommitLocallyAsync(
        DbConnection connection,
        IsolationLevel isolationLevel,
        string gid,
        Func<DbTransaction, CancellationToken, Task> localWork,
        CancellationToken cancellationToken)
    {
        var transaction = await connection.BeginTransactionAsync(isolationLevel, cancellationToken).ConfigureAwait(false);
        await using (transaction.ConfigureAwait(false))
        {
            try
            {
                await localWork(transaction, cancellationToken).ConfigureAwait(false);
                // Last, so the row lock (PostgreSQL) is held only for the commit; a queryPrepared that
                // came first has left 'rolled-back' here, and this throws instead of committing.
                await TreatyMessages.MarkCommittedAsync(transaction, gid, cancellationToken).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
            catch
            {
                await RollBackAsync(transaction).ConfigureAwait(false);
                throw;
            }

            // Not cancellable: a commit torn in half would leave its outcome to queryPrepared for no reason.
            await transaction.CommitAsync(CancellationToken.None).ConfigureAwait(false);
        }
    }

    private static async Task<MessageSendResult> SubmitAfterCommitAsync(
        TreatyClient client, TransactionView registered, TimeSpan? wait, CancellationToken cancellationToken)
    {
        try
        {
            var view = await client.SubmitPreparedAsync(registered.Gid, wait, cancellationToken).ConfigureAwait(false);
            return new MessageSendResult(view, MessageSendStatus.Submitted, null);
        }
        catch (TreatyApiException ex) when (!ex.IsTransient)
        {
            return new MessageSendResult(registered, MessageSendStatus.SubmitRefused, ex);
        }
        catch (Exception ex)
        {
            // The local transaction committed: whatever went wrong with the submit (no connection, a
            // timeout, a 5xx, a cancellation), throwing would tell the caller it did not happen.
            // queryPrepared finds the commit and the coordinator delivers.
            return new MessageSendResult(registered, MessageSendStatus.SubmitPending, ex);
        }
    }

    private static async Task RollBackAsync(DbTransaction transaction)
    {
        try
        {
            await transaction.RollbackAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is DbException or InvalidOperationException)
        {
            // The database may already have rolled it back (a failed statement on SQLite, a broken
            // connection); disposing the transaction rolls back what is left. The original error wins.
        }
    }
}
