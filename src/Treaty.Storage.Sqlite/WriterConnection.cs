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
    private readonly RawStatement _insert;
    private readonly RawStatement _update;
    private readonly SqliteCommand _selectState;
    private readonly SqliteCommand _selectVersion;
    private readonly RawStatement _appendJournal;
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
    private readonly List<RawStatement> _statements = [];

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
        // The three statements of every write (insert, decision, journal) bypass the driver.
        _insert = PrepareRaw(
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
        _update = PrepareRaw(
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
        _appendJournal = PrepareRaw(
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
        var s = _insert;
        s.Bind(0, row.Gid);
        s.Bind(1, row.Protocol);
        s.Bind(2, row.Status);
        s.Bind(3, row.Stuck);
        s.Bind(4, row.CreatedAt);
        s.Bind(5, row.UpdatedAt);
        s.Bind(6, row.NextWakeAt);
        s.Bind(7, row.Fingerprint);
        s.Bind(8, row.Version);
        s.Bind(9, row.StateJson);
        s.Bind(10, owner);
        s.Bind(11, epoch);
        s.Bind(12, leaseUntil);
        s.Bind(13, row.SpecJson ?? throw new InvalidOperationException("An insert needs the spec."));
        return s.ExecuteScalarInt64();
    }

    /// <summary>Replaces the row if it is at <paramref name="expectedVersion"/> under <paramref name="fence"/>
    /// and returns its id; null otherwise (nothing written).</summary>
    public long? TryUpdate(StoredRow row, long expectedVersion, Fence? fence)
    {
        var s = _update;
        s.Bind(0, row.Gid);
        s.Bind(1, row.Status);
        s.Bind(2, row.Stuck);
        s.Bind(3, row.UpdatedAt);
        s.Bind(4, row.NextWakeAt);
        s.Bind(5, row.Version);
        s.Bind(6, row.StateJson);
        s.Bind(7, expectedVersion);
        s.Bind(8, row.Terminal);
        s.Bind(9, fence?.Owner);
        s.Bind(10, fence is { } f ? f.Epoch : 0L);
        return s.ExecuteScalarInt64();
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
        var s = _appendJournal;
        s.Bind(0, tx);
        foreach (var entry in entries)
        {
            s.Bind(1, StoredValues.Time(entry.At));
            s.Bind(2, entry.Kind);
            s.Bind(3, entry.Branch);
            s.Bind(4, entry.Op);
            s.Bind(5, entry.Attempt);
            s.Bind(6, entry.StatusCode);
            s.Bind(7, entry.Detail);
            s.Bind(8, entry.DurationMs);
            s.Bind(9, entry.Body);
            s.ExecuteNonQuery();
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
        foreach (var statement in _statements)
        {
            statement.Dispose();
        }

        foreach (var command in _commands)
        {
            command.Dispose();
        }

        _connection.Dispose();
    }

    private RawStatement PrepareRaw(string sql, params string[] parameters)
    {
        var statement = new RawStatement(_connection.Handle!, sql, parameters);
        _statements.Add(statement);
        return statement;
    }

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
