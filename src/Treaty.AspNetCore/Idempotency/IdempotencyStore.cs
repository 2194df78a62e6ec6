using System.Data.Common;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;
using Treaty.Core.Serialization;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>A response stored under a key: what a replay sends again.</summary>
internal sealed record StoredResponse(int StatusCode, string? ContentType, IReadOnlyDictionary<string, string>? Headers, byte[] Body);

/// <summary>A row of the key table. <see cref="Owner"/> names the claim that may complete or release it.</summary>
internal sealed record IdempotencyRecord(
    string Fingerprint,
    string Owner,
    DateTimeOffset LockedUntil,
    DateTimeOffset ExpiresAt,
    StoredResponse? Response)
{
    public IdempotencyRecordState State => new(Fingerprint, Response is not null, LockedUntil, ExpiresAt);
}

/// <summary>The result of claiming a key: the decision, and for Run/TakeOver the owner token of the claim.</summary>
internal sealed record ClaimResult(IdempotencyDecision Decision, string? Owner, IdempotencyRecord? Existing);

/// <summary>
/// The key table in the participant's own database (SQLite or PostgreSQL). Every change is a
/// conditional statement on (scope, key) and, once claimed, the claim's owner token, so two
/// requests can never both hold, complete or release one key.
/// </summary>
internal sealed partial class IdempotencyStore(
    ParticipantDatabase database,
    TimeProvider time,
    IOptions<IdempotencyOptions> options,
    ILogger<IdempotencyStore> logger)
{
    private const string Table = IdempotencyDefaults.TableName;
    private const int MaxClaimAttempts = 8;

    private const string Columns = "fingerprint, owner, locked_until, expires_at, status_code, content_type, headers, body";

    private const string SqliteSchema =
        $"""
        CREATE TABLE IF NOT EXISTS {Table} (
            scope TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            locked_until INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            status_code INTEGER NULL,
            content_type TEXT NULL,
            headers TEXT NULL,
            body BLOB NULL,
            PRIMARY KEY (scope, idempotency_key));
        CREATE INDEX IF NOT EXISTS {Table}_expires_at ON {Table} (expires_at);
        """;

    private const string PostgreSqlSchema =
        $"""
        CREATE TABLE IF NOT EXISTS {Table} (
            scope TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            locked_until BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            status_code INTEGER NULL,
            content_type TEXT NULL,
            headers TEXT NULL,
            body BYTEA NULL,
            PRIMARY KEY (scope, idempotency_key));
        CREATE INDEX IF NOT EXISTS {Table}_expires_at ON {Table} (expires_at);
        """;

    private readonly SemaphoreSlim _schemaGate = new(1, 1);

    private volatile bool _schemaReady;

    public ParticipantDatabase Database => database;

    /// <summary>Creates the key table when missing (idempotent DDL); later calls return at once.</summary>
    public async Task EnsureSchemaAsync(CancellationToken cancellationToken)
    {
        if (_schemaReady)
        {
            return;
        }

        await _schemaGate.WaitAsync(cancellationToken);
        try
        {
            if (_schemaReady)
            {
                return;
            }

            await database.ExecuteDdlAsync(database.Dialect == SqlDialect.PostgreSql ? PostgreSqlSchema : SqliteSchema, cancellationToken);
            _schemaReady = true;
        }
        finally
        {
            _schemaGate.Release();
        }
    }

    /// <summary>
    /// Claims the key for a request with <paramref name="fingerprint"/>, or reports why not, in
    /// one short transaction of its own (committed before the handler runs, so other requests see
    /// the key in flight).
    /// </summary>
    public async Task<ClaimResult> ClaimAsync(string scope, string key, string fingerprint, CancellationToken cancellationToken)
    {
        var settings = options.Value;
        for (var attempt = 0; attempt < MaxClaimAttempts; attempt++)
        {
            await using var transaction = await database.BeginAsync(cancellationToken);
            var now = time.GetUtcNow();
            var (lockedUntil, expiresAt) = IdempotencyRules.Claim(now, settings.LockTimeout, settings.KeyLifetime);
            var owner = Guid.NewGuid().ToString("N");

            await using (var insert = transaction.CreateCommand(
                $"""
                INSERT INTO {Table} (scope, idempotency_key, fingerprint, owner, created_at, locked_until, expires_at)
                VALUES (@scope, @key, @fingerprint, @owner, @now, @lockedUntil, @expiresAt)
                ON CONFLICT (scope, idempotency_key) DO NOTHING
                """,
                ("scope", scope),
                ("key", key),
                ("fingerprint", fingerprint),
                ("owner", owner),
                ("now", now.ToUnixTimeMilliseconds()),
                ("lockedUntil", lockedUntil.ToUnixTimeMilliseconds()),
                ("expiresAt", expiresAt.ToUnixTimeMilliseconds())))
            {
                if (await insert.ExecuteNonQueryAsync(cancellationToken) == 1)
                {
                    await transaction.CommitAsync(cancellationToken);
                    return new ClaimResult(new IdempotencyDecision(IdempotencyAction.Run), owner, null);
                }
            }

            // PostgreSQL: lock the row so a take-over and a completion cannot interleave; SQLite's
            // BEGIN IMMEDIATE already holds the database's write lock.
            var existing = await ReadAsync(transaction, scope, key, forUpdate: database.Dialect == SqlDialect.PostgreSql, cancellationToken);
            if (existing is null)
            {
                continue; // released between our insert and our read: try the insert again
            }

            var decision = IdempotencyRules.Decide(existing.State, fingerprint, now);
            if (decision.Action is not (IdempotencyAction.Run or IdempotencyAction.TakeOver))
            {
                return new ClaimResult(decision, null, existing);
            }

            // an expired key (Run) or an abandoned claim (TakeOver): replace it, on the condition that
            // it still belongs to the owner we read, so that of two takers only one wins
            await using var replace = transaction.CreateCommand(
                $"""
                UPDATE {Table}
                SET fingerprint = @fingerprint, owner = @owner, created_at = @now, locked_until = @lockedUntil,
                    expires_at = @expiresAt, status_code = NULL, content_type = NULL, headers = NULL, body = NULL
                WHERE scope = @scope AND idempotency_key = @key AND owner = @previousOwner
                """,
                ("fingerprint", fingerprint),
                ("owner", owner),
                ("now", now.ToUnixTimeMilliseconds()),
                ("lockedUntil", lockedUntil.ToUnixTimeMilliseconds()),
                ("expiresAt", expiresAt.ToUnixTimeMilliseconds()),
                ("scope", scope),
                ("key", key),
                ("previousOwner", existing.Owner));
            if (await replace.ExecuteNonQueryAsync(cancellationToken) == 1)
            {
                await transaction.CommitAsync(cancellationToken);
                if (decision.Action == IdempotencyAction.TakeOver)
                {
                    LogTakenOver(logger, key, existing.LockedUntil);
                }

                return new ClaimResult(decision, owner, existing);
            }
        }

        throw new InvalidOperationException($"Could not claim idempotency key '{key}' after {MaxClaimAttempts} attempts.");
    }

    /// <summary>
    /// Stores the final response under the key in the handler's own transaction (the caller
    /// commits). False when the claim was lost (taken over after its lock expired): the caller
    /// must roll back.
    /// </summary>
    public async Task<bool> CompleteAsync(ParticipantTransaction transaction, string scope, string key, string owner, StoredResponse response, CancellationToken cancellationToken)
    {
        var headers = response.Headers is { Count: > 0 }
            ? JsonSerializer.Serialize(new Dictionary<string, string>(response.Headers, StringComparer.OrdinalIgnoreCase), TreatyJsonContext.Default.DictionaryStringString)
            : null;
        await using var update = transaction.CreateCommand(
            $"""
            UPDATE {Table}
            SET status_code = @status, content_type = @contentType, headers = @headers, body = @body
            WHERE scope = @scope AND idempotency_key = @key AND owner = @owner AND status_code IS NULL
            """,
            ("status", response.StatusCode),
            ("contentType", response.ContentType),
            ("headers", headers),
            ("body", response.Body),
            ("scope", scope),
            ("key", key),
            ("owner", owner));
        return await update.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    /// <summary>
    /// Frees a claim whose request failed, so a retry runs again. Only an uncompleted claim of
    /// this owner is deleted: when a commit reported failure but in fact succeeded, the stored
    /// response stays.
    /// </summary>
    public async Task ReleaseAsync(string scope, string key, string owner, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var delete = transaction.CreateCommand(
            $"DELETE FROM {Table} WHERE scope = @scope AND idempotency_key = @key AND owner = @owner AND status_code IS NULL",
            ("scope", scope),
            ("key", key),
            ("owner", owner));
        await delete.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }

    /// <summary>Reads the record of a key in its own transaction, or null.</summary>
    public async Task<IdempotencyRecord?> FindAsync(string scope, string key, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        return await ReadAsync(transaction, scope, key, forUpdate: false, cancellationToken);
    }

    /// <summary>Deletes up to one batch of keys that expired at <paramref name="now"/>; returns how many.</summary>
    /// <remarks>
    /// The outer <c>expires_at</c> condition matters on PostgreSQL: a request may re-claim an expired
    /// key while the sweep waits for that row's lock; READ COMMITTED then re-checks the outer
    /// conditions against the new row version (not the subquery's snapshot), so a fresh claim is
    /// not deleted from under its request.
    /// </remarks>
    public async Task<int> SweepBatchAsync(DateTimeOffset now, int batchSize, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var delete = transaction.CreateCommand(
            $"""
            DELETE FROM {Table}
            WHERE expires_at <= @now AND (scope, idempotency_key) IN (
                SELECT scope, idempotency_key FROM {Table} WHERE expires_at <= @now ORDER BY expires_at LIMIT @limit)
            """,
            ("now", now.ToUnixTimeMilliseconds()),
            ("limit", batchSize));
        var deleted = await delete.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return deleted;
    }

    /// <summary>Deletes every key expired at <paramref name="now"/>, one short transaction per batch.</summary>
    public async Task<int> SweepAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        var batchSize = options.Value.SweepBatchSize;
        var total = 0;
        int deleted;
        do
        {
            deleted = await SweepBatchAsync(now, batchSize, cancellationToken);
            total += deleted;
        }
        while (deleted == batchSize);

        return total;
    }

    private static async Task<IdempotencyRecord?> ReadAsync(ParticipantTransaction transaction, string scope, string key, bool forUpdate, CancellationToken cancellationToken)
    {
        await using var select = transaction.CreateCommand(
            forUpdate
                ? $"SELECT {Columns} FROM {Table} WHERE scope = @scope AND idempotency_key = @key FOR UPDATE"
                : $"SELECT {Columns} FROM {Table} WHERE scope = @scope AND idempotency_key = @key",
            ("scope", scope),
            ("key", key));
        await using var reader = await select.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return null;
        }

        return Map(reader);
    }

    private static IdempotencyRecord Map(DbDataReader reader)
    {
        StoredResponse? response = null;
        if (!reader.IsDBNull(4))
        {
            var headers = reader.IsDBNull(6)
                ? null
                : JsonSerializer.Deserialize(reader.GetString(6), TreatyJsonContext.Default.DictionaryStringString);
            response = new StoredResponse(
                Convert.ToInt32(reader.GetValue(4), System.Globalization.CultureInfo.InvariantCulture),
                reader.IsDBNull(5) ? null : reader.GetString(5),
                headers,
                reader.IsDBNull(7) ? [] : (byte[])reader.GetValue(7));
        }

        return new IdempotencyRecord(
            reader.GetString(0),
            reader.GetString(1),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)),
            response);
    }

    [LoggerMessage(EventId = 4103, Level = LogLevel.Warning, Message = "Idempotency key {Key} was in flight with a lock that expired at {LockedUntil} (its request crashed or is too slow); taken over")]
    private static partial void LogTakenOver(ILogger logger, string key, DateTimeOffset lockedUntil);
}

