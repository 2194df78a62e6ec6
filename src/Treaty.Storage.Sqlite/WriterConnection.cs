using System.Globalization;
using Microsoft.Data.Sqlite;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// The single writer connection with its statements prepared once and reused for every write
/// (binding new values to a prepared statement skips SQLite's parser on the hot path). Used only by
/// the writer thread.
/// </summary>
internal sealed class WriterConnection : IDisposable
{
    private readonly SqliteConnection _connection;
    private readonly SqliteCommand _begin;
    private readonly SqliteCommand _commit;
    private readonly SqliteCommand _rollback;
    private readonly SqliteCommand _savepoint;
    private readonly SqliteCommand _release;
    private readonly SqliteCommand _rollbackToSavepoint;
    private readonly SqliteCommand _insert;
    private readonly SqliteCommand _update;
    private readonly SqliteCommand _selectState;
    private readonly SqliteCommand _selectVersion;
    private readonly SqliteCommand _appendJournal;
    private readonly SqliteCommand _selectFinished;
    private readonly SqliteCommand _deleteJournal;
    private readonly SqliteCommand _deleteTransaction;
    private readonly SqliteCommand _selectFence;
    private readonly SqliteCommand _claimDue;
    private readonly SqliteCommand _claimOne;
    private readonly SqliteCommand _renew;
    private readonly SqliteCommand _releaseLease;
    private readonly SqliteCommand _releaseEveryone;
    private readonly List<SqliteCommand> _commands = [];

    public WriterConnection(SqliteConnection connection)
    {
        _connection = connection;
        // Transactions are driven by plain statements rather than SqliteTransaction so that BEGIN,
        // COMMIT and the per-write savepoints are prepared statements like the rest.
        _begin = Prepare("BEGIN IMMEDIATE;");
        _commit = Prepare("COMMIT;");
        _rollback = Prepare("ROLLBACK;");
        _savepoint = Prepare("SAVEPOINT treaty_write;");
        _release = Prepare("RELEASE treaty_write;");
        _rollbackToSavepoint = Prepare("ROLLBACK TO treaty_write;");
        _insert = Prepare(
            """
            INSERT INTO transactions (gid, protocol, status, stuck, created_at, updated_at, next_wake_at, fingerprint, version, state_json, owner, epoch, lease_until, spec_json)
            VALUES ($gid, $protocol, $status, $stuck, $created_at, $updated_at, $next_wake_at, $fingerprint, $version, $state_json, $owner, $epoch, $lease_until, $spec_json)
            ON CONFLICT (gid) DO NOTHING
            RETURNING id;
            """,
            "$gid", "$protocol", "$status", "$stuck", "$created_at", "$updated_at", "$next_wake_at", "$fingerprint", "$version", "$state_json",
            "$owner", "$epoch", "$lease_until", "$spec_json");
        // created_at, protocol and fingerprint never change after the insert; leaving them out of SET
        // spares SQLite from rewriting the listing indexes on every decision. The fence: the stored
        // owner must be the writer's (IS: both NULL for an unfenced write) at the writer's epoch; a
        // terminal write gives the lease up.
        _update = Prepare(
            """
            UPDATE transactions
            SET status = $status, stuck = $stuck, updated_at = $updated_at, next_wake_at = $next_wake_at,
                version = $version, state_json = $state_json,
                owner = CASE WHEN $terminal THEN NULL ELSE owner END,
                lease_until = CASE WHEN $terminal THEN NULL ELSE lease_until END
            WHERE gid = $gid AND version = $expected_version AND owner IS $fence_owner AND ($fence_owner IS NULL OR epoch = $fence_epoch)
            RETURNING id;
            """,
            "$gid", "$status", "$stuck", "$updated_at", "$next_wake_at", "$version", "$state_json", "$expected_version",
            "$terminal", "$fence_owner", "$fence_epoch");
        _selectFence = Prepare("SELECT version, owner, epoch FROM transactions WHERE gid = $gid;", "$gid");
        _claimDue = Prepare(
            $"""
            UPDATE transactions SET owner = $owner, epoch = epoch + 1, lease_until = $until
            WHERE gid IN (
                SELECT gid FROM transactions
                WHERE {Schema.DueFilter} AND (owner IS NULL OR lease_until <= $now)
                ORDER BY {Schema.DueKey}, gid LIMIT $limit)
            RETURNING gid, epoch;
            """,
            "$owner", "$until", "$due_by", "$now", "$limit");
        _claimOne = Prepare(
            $"""
            UPDATE transactions SET owner = $owner, epoch = epoch + 1, lease_until = $until
            WHERE gid = $gid AND {Schema.NonTerminal}
              AND ($take_over OR owner IS NULL OR owner = $owner OR lease_until <= $now)
            RETURNING epoch;
            """,
            "$owner", "$until", "$gid", "$take_over", "$now");
        _renew = Prepare(
            "UPDATE transactions SET lease_until = $until WHERE gid = $gid AND owner = $owner AND epoch = $epoch;",
            "$until", "$gid", "$owner", "$epoch");
        _releaseLease = Prepare(
            "UPDATE transactions SET owner = NULL, lease_until = NULL WHERE gid = $gid AND owner = $owner AND epoch = $epoch;",
            "$gid", "$owner", "$epoch");
        _releaseEveryone = Prepare("UPDATE transactions SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL;");
        _selectState = Prepare("SELECT spec_json, state_json FROM transactions WHERE gid = $gid;", "$gid");
        _selectVersion = Prepare("SELECT version FROM transactions WHERE gid = $gid;", "$gid");
        _appendJournal = Prepare(
            """
            INSERT INTO journal (tx, at, kind, branch, op, attempt, status_code, detail, duration_ms, body)
            VALUES ($tx, $at, $kind, $branch, $op, $attempt, $status_code, $detail, $duration_ms, $body);
            """,
            "$tx", "$at", "$kind", "$branch", "$op", "$attempt", "$status_code", "$detail", "$duration_ms", "$body");
        _selectFinished = Prepare(Schema.FinishedBatch,
            "$before", "$limit");
        _deleteJournal = Prepare("DELETE FROM journal WHERE tx = $tx;", "$tx");
        // The status check again: only a finished row goes, even if a caller passed an id by mistake.
        _deleteTransaction = Prepare($"DELETE FROM transactions WHERE id = $tx AND {Schema.Terminal};", "$tx");
    }

    /// <summary>The raw connection, for diagnostics run on the writer thread.</summary>
    public SqliteConnection Connection => _connection;

    public void Begin() => _begin.ExecuteNonQuery();

    public void Commit() => _commit.ExecuteNonQuery();

    public void Rollback() => _rollback.ExecuteNonQuery();

    public void Savepoint() => _savepoint.ExecuteNonQuery();

    public void Release() => _release.ExecuteNonQuery();

    public void RollbackToSavepoint() => _rollbackToSavepoint.ExecuteNonQuery();

    /// <summary>Inserts the row; its id, or null when a row with its gid exists (nothing written).</summary>
    public long? TryInsert(StoredRow row, string? owner, long epoch, long? leaseUntil)
    {
        var p = _insert.Parameters;
        p[0].Value = row.Gid;
        p[1].Value = row.Protocol;
        p[2].Value = row.Status;
        p[3].Value = row.Stuck ? 1 : 0;
        p[4].Value = row.CreatedAt;
        p[5].Value = row.UpdatedAt;
        p[6].Value = Nullable(row.NextWakeAt);
        p[7].Value = row.Fingerprint;
        p[8].Value = row.Version;
        p[9].Value = row.StateJson;
        p[10].Value = Nullable(owner);
        p[11].Value = epoch;
        p[12].Value = Nullable(leaseUntil);
        p[13].Value = row.SpecJson ?? throw new InvalidOperationException("An insert needs the spec.");
        return Id(_insert.ExecuteScalar());
    }

    /// <summary>Replaces the row if it is at <paramref name="expectedVersion"/> under <paramref name="fence"/>
    /// and returns its id; null otherwise (nothing written).</summary>
    public long? TryUpdate(StoredRow row, long expectedVersion, Fence? fence)
    {
        var p = _update.Parameters;
        p[0].Value = row.Gid;
        p[1].Value = row.Status;
        p[2].Value = row.Stuck ? 1 : 0;
        p[3].Value = row.UpdatedAt;
        p[4].Value = Nullable(row.NextWakeAt);
        p[5].Value = row.Version;
        p[6].Value = row.StateJson;
        p[7].Value = expectedVersion;
        p[8].Value = row.Terminal ? 1 : 0;
        p[9].Value = fence is { } f ? f.Owner : DBNull.Value;
        p[10].Value = fence is { } g ? g.Epoch : 0L;
        return Id(_update.ExecuteScalar());
    }

    /// <summary>The stored version, owner and epoch of a gid (null when it does not exist).</summary>
    public (long Version, string? Owner, long Epoch)? ReadFence(string gid)
    {
        _selectFence.Parameters[0].Value = gid;
        using var reader = _selectFence.ExecuteReader();
        return reader.Read()
            ? (reader.GetInt64(0), reader.IsDBNull(1) ? null : reader.GetString(1), reader.GetInt64(2))
            : null;
    }

    /// <summary>Claims due work nobody holds; see <see cref="Core.Engine.ITransactionStore.ClaimDueAsync"/>.</summary>
    public List<LeaseClaim> ClaimDue(string owner, long until, long dueBy, long now, int limit)
    {
        var p = _claimDue.Parameters;
        p[0].Value = owner;
        p[1].Value = until;
        p[2].Value = dueBy;
        p[3].Value = now;
        p[4].Value = limit;
        var claims = new List<LeaseClaim>();
        using var reader = _claimDue.ExecuteReader();
        while (reader.Read())
        {
            claims.Add(new LeaseClaim(reader.GetString(0), reader.GetInt64(1)));
        }

        return claims;
    }

    /// <summary>Claims one transaction; null when it may not be claimed.</summary>
    public LeaseClaim? ClaimOne(string gid, string owner, long until, bool takeOver, long now)
    {
        var p = _claimOne.Parameters;
        p[0].Value = owner;
        p[1].Value = until;
        p[2].Value = gid;
        p[3].Value = takeOver ? 1 : 0;
        p[4].Value = now;
        return _claimOne.ExecuteScalar() is { } epoch and not DBNull
            ? new LeaseClaim(gid, Convert.ToInt64(epoch, CultureInfo.InvariantCulture))
            : null;
    }

    /// <summary>Renews each held lease; returns the gids it could not renew.</summary>
    public List<string> Renew(string owner, long until, IReadOnlyCollection<LeaseClaim> held)
    {
        var lost = new List<string>();
        var p = _renew.Parameters;
        p[0].Value = until;
        p[2].Value = owner;
        foreach (var claim in held)
        {
            p[1].Value = claim.Gid;
            p[3].Value = claim.Epoch;
            if (_renew.ExecuteNonQuery() == 0)
            {
                lost.Add(claim.Gid);
            }
        }

        return lost;
    }

    /// <summary>Releases each lease still held at its epoch.</summary>
    public void ReleaseLeases(string owner, IReadOnlyCollection<LeaseClaim> held)
    {
        var p = _releaseLease.Parameters;
        p[1].Value = owner;
        foreach (var claim in held)
        {
            p[0].Value = claim.Gid;
            p[2].Value = claim.Epoch;
            _releaseLease.ExecuteNonQuery();
        }
    }

    /// <summary>Ends every lease (the file was just opened: no other process can hold one).</summary>
    public int ReleaseEveryone() => _releaseEveryone.ExecuteNonQuery();

    /// <summary>The stored state of a gid, or null.</summary>
    public TransactionState? ReadState(string gid)
    {
        _selectState.Parameters[0].Value = gid;
        using var reader = _selectState.ExecuteReader();
        return reader.Read() ? SqliteStoredState.Read(reader, 0, 1) : null;
    }

    public long? ReadVersion(string gid)
    {
        _selectVersion.Parameters[0].Value = gid;
        return _selectVersion.ExecuteScalar() is { } value and not DBNull
            ? Convert.ToInt64(value, CultureInfo.InvariantCulture)
            : null;
    }

    /// <summary>Appends entries to the journal of the transaction with id <paramref name="tx"/>.</summary>
    public void AppendJournal(long tx, IReadOnlyList<JournalEntry> entries)
    {
        var p = _appendJournal.Parameters;
        p[0].Value = tx;
        foreach (var entry in entries)
        {
            p[1].Value = StoredValues.Time(entry.At);
            p[2].Value = entry.Kind;
            p[3].Value = Nullable(entry.Branch);
            p[4].Value = Nullable(entry.Op);
            p[5].Value = Nullable(entry.Attempt);
            p[6].Value = Nullable(entry.StatusCode);
            p[7].Value = Nullable(entry.Detail);
            p[8].Value = Nullable(entry.DurationMs);
            p[9].Value = Nullable(entry.Body);
            _appendJournal.ExecuteNonQuery();
        }
    }

    /// <summary>Deletes up to <paramref name="limit"/> finished transactions last written before
    /// <paramref name="before"/> (UTC ticks), oldest first, with their journal rows; returns how many.</summary>
    public int PurgeFinished(long before, int limit)
    {
        _selectFinished.Parameters[0].Value = before;
        _selectFinished.Parameters[1].Value = limit;
        var ids = new List<long>(limit);
        using (var reader = _selectFinished.ExecuteReader())
        {
            while (reader.Read())
            {
                ids.Add(reader.GetInt64(0));
            }
        }

        var deleted = 0;
        foreach (var id in ids)
        {
            _deleteJournal.Parameters[0].Value = id;
            _deleteJournal.ExecuteNonQuery();
            _deleteTransaction.Parameters[0].Value = id;
            deleted += _deleteTransaction.ExecuteNonQuery();
        }

        return deleted;
    }

    public void Dispose()
    {
        foreach (var command in _commands)
        {
            command.Dispose();
        }

        _connection.Dispose();
    }

    private static long? Id(object? value) => value is long id ? id : null;

    private static object Nullable<T>(T? value) where T : struct => value.HasValue ? value.Value : DBNull.Value;

    private static object Nullable(string? value) => value is null ? DBNull.Value : value;

    private SqliteCommand Prepare(string sql, params string[] parameters)
    {
        var command = _connection.CreateCommand();
        command.CommandText = sql;
        foreach (var name in parameters)
        {
            // Created once with a placeholder; each write binds its own value.
            command.Parameters.Add(new SqliteParameter(name, DBNull.Value));
        }

        _commands.Add(command);
        command.Prepare();
        return command;
    }
}
