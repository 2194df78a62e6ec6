using System.Data.Common;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.Core.Diagnostics;

namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>
/// Semantic locks: PENDING markers in the participant's own database (<c>treaty_semantic_locks</c>:
/// resource, holder gid, since, expires) that give a saga the isolation it lacks. A branch that
/// puts something in flight (an order created PENDING, stock reserved for a checkout) takes the
/// resource's lock for its gid in the same local transaction as that write, and releases it in the
/// transaction that settles it (confirm, or compensate). Meanwhile another gid that wants the
/// resource is refused (answer it with a definitive 409, or wait), and a reader asks
/// <see cref="GetHolderAsync(ParticipantTransaction, string, CancellationToken)"/> and shows
/// PROCESSING instead of a half-done state. A lock older than
/// <see cref="SemanticLockOptions.Timeout"/> (a crashed holder) may be taken over.
/// </summary>
/// <remarks>
/// <para>How the Shop uses them. The order branch creates the order PENDING and takes
/// <c>order/{orderId}</c> for the saga's gid; the confirm (pivot) step sets CONFIRMED and releases
/// it, the compensation sets CANCELLED and releases it; <c>GET /orders/{id}</c> shows PROCESSING
/// while it is held, and a second saga for the same order (a resubmission under another gid) is
/// refused instead of charging and reserving twice. The inventory branch takes
/// <c>reservation/{orderId}</c> with the reservation it writes, so the quantity in flight is counted
/// as reserved (never offered again) but shown as PROCESSING rather than sold, and a second saga of
/// the same order cannot reserve the same stock again; its release, or the order's confirmation,
/// drops the lock.</para>
/// <para>Take locks in the handler's <see cref="ParticipantTransaction"/> behind the branch
/// barrier: the barrier makes the acquire run once per (gid, branch, op), and a refusal answered
/// as a definitive failure rolls the acquire back with the rest.</para>
/// </remarks>
public sealed class SemanticLockManager
{
    private const int MaxRaceRetries = 8;

    private readonly TimeSpan _timeout;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;

    /// <summary>Creates the helpers with <paramref name="options"/> (validated here) and <paramref name="timeProvider"/>.</summary>
    public SemanticLockManager(SemanticLockOptions options, TimeProvider timeProvider, ILogger<SemanticLockManager>? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(timeProvider);
        var problems = options.Validate();
        if (problems.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", problems), nameof(options));
        }

        _timeout = options.Timeout;
        _timeProvider = timeProvider;
        _logger = logger ?? NullLogger<SemanticLockManager>.Instance;
    }

    /// <summary>
    /// Takes <paramref name="resource"/> for <paramref name="gid"/> inside <paramref name="transaction"/>
    /// (the lock exists once that transaction commits): acquired when free, renewed when the gid
    /// already holds it, taken over when another gid's lock has expired, refused otherwise.
    /// </summary>
    public async Task<SemanticLockAttempt> TryAcquireAsync(ParticipantTransaction transaction, string resource, string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        CheckKey(resource, nameof(resource));
        CheckKey(gid, nameof(gid));

        // Usually inside the barrier's scope of the same gid (then nothing is opened); a lock taken
        // elsewhere (a message consumer, a background job) still logs with its gid.
        using var scope = _logger.BeginGidScope(gid);
        for (var attempt = 0; attempt < MaxRaceRetries; attempt++)
        {
            var now = _timeProvider.GetUtcNow();
            var fresh = SemanticLockRules.After(SemanticLockOutcome.Acquired, null, resource, gid, now, _timeout);

            // A free resource is taken by the insert; on PostgreSQL an insert racing another
            // transaction's uncommitted insert waits for it, then does nothing.
            await using (var insert = transaction.CreateCommand(SemanticLockSql.InsertIfFree, Parameters(fresh)))
            {
                if (await insert.ExecuteNonQueryAsync(cancellationToken) == 1)
                {
                    SemanticLockLog.Acquired(_logger, resource, gid);
                    return new SemanticLockAttempt(SemanticLockOutcome.Acquired, fresh);
                }
            }

            var current = await ReadAsync(transaction.Connection, transaction.Transaction, SemanticLockSql.SelectForUpdate(transaction.Dialect), resource, cancellationToken);
            if (current is null)
            {
                // Released between the insert and the read (PostgreSQL, READ COMMITTED): try again.
                continue;
            }

            var outcome = SemanticLockRules.Decide(current, gid, now);
            var after = SemanticLockRules.After(outcome, current, resource, gid, now, _timeout);
            switch (outcome)
            {
                case SemanticLockOutcome.Refused:
                    SemanticLockLog.Refused(_logger, resource, gid, current.Gid);
                    return new SemanticLockAttempt(outcome, current);

                case SemanticLockOutcome.TakenOver:
                    await UpdateAsync(transaction, after, cancellationToken);
                    SemanticLockLog.TakenOver(_logger, resource, gid, current.Gid, current.Since);
                    return new SemanticLockAttempt(outcome, after, current);

                default:
                    await UpdateAsync(transaction, after, cancellationToken);
                    return new SemanticLockAttempt(outcome, after);
            }
        }

        throw new InvalidOperationException($"The semantic lock '{resource}' kept changing hands; gave up after {MaxRaceRetries} attempts.");
    }

    /// <summary>Releases <paramref name="resource"/> if <paramref name="gid"/> holds it; false when it did not (already released, or taken over).</summary>
    public async Task<bool> ReleaseAsync(ParticipantTransaction transaction, string resource, string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        CheckKey(resource, nameof(resource));
        CheckKey(gid, nameof(gid));
        using var scope = _logger.BeginGidScope(gid);
        await using var delete = transaction.CreateCommand(SemanticLockSql.Delete, ("resource", resource), ("gid", gid));
        var released = await delete.ExecuteNonQueryAsync(cancellationToken) > 0;
        if (released)
        {
            SemanticLockLog.Released(_logger, resource, gid);
        }

        return released;
    }

    /// <summary>Releases every lock <paramref name="gid"/> holds (a compensation that undoes all of a transaction's work); returns how many.</summary>
    public async Task<int> ReleaseAllAsync(ParticipantTransaction transaction, string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        CheckKey(gid, nameof(gid));
        await using var delete = transaction.CreateCommand(SemanticLockSql.DeleteAll, ("gid", gid));
        return await delete.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Who holds <paramref name="resource"/>, or null when it is free. An expired lock is still returned (see <see cref="SemanticLockHolder.IsExpiredAt"/>).</summary>
    public Task<SemanticLockHolder?> GetHolderAsync(ParticipantTransaction transaction, string resource, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        CheckKey(resource, nameof(resource));
        return ReadAsync(transaction.Connection, transaction.Transaction, SemanticLockSql.Select, resource, cancellationToken);
    }

    /// <summary>
    /// Who holds <paramref name="resource"/>, read on an open connection of the participant's
    /// database outside any kit transaction (a read endpoint that shows PROCESSING), with
    /// <paramref name="transaction"/> when the connection has one.
    /// </summary>
    public Task<SemanticLockHolder?> GetHolderAsync(DbConnection connection, string resource, CancellationToken cancellationToken, DbTransaction? transaction = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        CheckKey(resource, nameof(resource));
        return ReadAsync(connection, transaction, SemanticLockSql.Select, resource, cancellationToken);
    }

    /// <summary>The DDL of <c>treaty_semantic_locks</c> for <paramref name="dialect"/>.</summary>
    internal static string Schema(SqlDialect dialect) => SemanticLockSql.Schema(dialect);

    /// <summary>Creates <c>treaty_semantic_locks</c> when it does not exist.</summary>
    internal static Task EnsureSchemaAsync(ParticipantDatabase database, CancellationToken cancellationToken) =>
        database.ExecuteDdlAsync(SemanticLockSql.Schema(database.Dialect), cancellationToken);

    private static async Task<SemanticLockHolder?> ReadAsync(DbConnection connection, DbTransaction? transaction, string sql, string resource, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = sql;
        var parameter = command.CreateParameter();
        parameter.ParameterName = "resource";
        parameter.Value = resource;
        command.Parameters.Add(parameter);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return null;
        }

        return new SemanticLockHolder(
            resource,
            reader.GetString(0),
            reader.GetFieldValue<DateTimeOffset>(1),
            reader.GetFieldValue<DateTimeOffset>(2));
    }

    private static async Task UpdateAsync(ParticipantTransaction transaction, SemanticLockHolder holder, CancellationToken cancellationToken)
    {
        await using var update = transaction.CreateCommand(SemanticLockSql.Update, Parameters(holder));
        await update.ExecuteNonQueryAsync(cancellationToken);
    }

    private static (string, object?)[] Parameters(SemanticLockHolder holder) =>
    [
        ("resource", holder.Resource),
        ("gid", holder.Gid),
        ("since", holder.Since),
        ("expires_at", holder.ExpiresAt),
    ];

    private static void CheckKey(string value, string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(value, name);
        if (value.Length > SemanticLockDefaults.MaxKeyLength)
        {
            throw new ArgumentException($"Longer than {SemanticLockDefaults.MaxKeyLength} characters.", name);
        }
    }
}
