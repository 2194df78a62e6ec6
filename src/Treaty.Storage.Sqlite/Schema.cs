using System.Globalization;
using Microsoft.Data.Sqlite;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// The schema and its migrations. The version lives in <c>PRAGMA user_version</c> (the database
/// header, written in the same transaction as the migration); a migration is appended, never edited.
/// </summary>
internal static class Schema
{
    /// <summary>Statuses the due-work index leaves out. Stored values; see <see cref="StoredValues"/>.</summary>
    public const string NonTerminal = "status NOT IN ('committed', 'aborted')";

    /// <summary>Statuses the finished index holds, spelled as in the index so the planner uses it.</summary>
    public const string Terminal = "status IN ('committed', 'aborted')";

    /// <summary>
    /// The oldest finished transactions, for retention. INDEXED BY, because without statistics the
    /// planner prefers the status index and sorts every committed row by updated_at for each batch
    /// (the plan test caught it); with it, a batch reads only its own entries of the partial index,
    /// and SQLite refuses the statement outright if the index could not serve it.
    /// </summary>
    public const string FinishedBatch =
        "SELECT id FROM transactions INDEXED BY ix_transactions_finished WHERE " + Terminal +
        " AND updated_at < $before ORDER BY updated_at, gid LIMIT $limit;";

    /// <summary>The sort key of due work: an unset wake-up time sorts first (ticks are never negative).</summary>
    public const string DueKey = "coalesce(next_wake_at, -1)";

    /// <summary>Filter and order of due work, spelled exactly as in the partial index so the planner uses it.</summary>
    public const string DueFilter = NonTerminal + " AND " + DueKey + " <= $due_by";

    // Migration i (0-based) moves the schema from version i to i + 1.
    private static readonly string[] Migrations =
    [
        // 1: Branch progress lives inside state_json rather than in a branches table: a decision is
        // then exactly one row write (plus its journal rows), which is what keeps group commit cheap.
        // The columns beside state_json copy the fields that listings and recovery filter on.
        // Times are UTC ticks: exact (a DateTimeOffset has tick precision, so "since" and cursors
        // never round) and never negative.
        $"""
        CREATE TABLE transactions (
            gid          TEXT    NOT NULL PRIMARY KEY,
            protocol     TEXT    NOT NULL,
            status       TEXT    NOT NULL,
            stuck        INTEGER NOT NULL,
            created_at   INTEGER NOT NULL,
            updated_at   INTEGER NOT NULL,
            next_wake_at INTEGER NULL,
            fingerprint  TEXT    NOT NULL,
            version      INTEGER NOT NULL,
            state_json   TEXT    NOT NULL
        );
        CREATE INDEX ix_transactions_created ON transactions (created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_status_created ON transactions (status, created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_stuck_created ON transactions (created_at DESC, gid DESC) WHERE stuck = 1;
        CREATE INDEX ix_transactions_due ON transactions ({DueKey}, gid) WHERE {NonTerminal};
        CREATE TABLE journal (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            gid         TEXT    NOT NULL,
            at          INTEGER NOT NULL,
            kind        TEXT    NOT NULL,
            branch      TEXT    NULL,
            op          TEXT    NULL,
            attempt     INTEGER NULL,
            status_code INTEGER NULL,
            detail      TEXT    NULL
        );
        CREATE INDEX ix_journal_gid ON journal (gid, seq);
        """,
        // 2: The dashboard's timeline shows each answered attempt's latency and the participant's
        // answer (clipped by the server). Nullable columns: rows written before stay as they were.
        """
        ALTER TABLE journal ADD COLUMN duration_ms INTEGER NULL;
        ALTER TABLE journal ADD COLUMN body TEXT NULL;
        """,
        // 3: Retention deletes finished transactions oldest first. A terminal row's updated_at is
        // the moment it finished (nothing writes it afterwards); the partial index holds only
        // finished rows, so the running ones cost it nothing and a purge never scans them.
        $"""
        CREATE INDEX ix_transactions_finished ON transactions (updated_at, gid) WHERE {Terminal};
        """,
        // 4: Leases. The store is one process's (one coordinator per file), but it keeps the same
        // owner/epoch fencing as a shared database so the engine has one code path: owner NULL when
        // nobody holds the transaction, epoch raised by every claim, lease_until in UTC ticks.
        """
        ALTER TABLE transactions ADD COLUMN owner TEXT NULL;
        ALTER TABLE transactions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE transactions ADD COLUMN lease_until INTEGER NULL;
        """,
        // 5: The spec (branches, URLs, payload: most of the bytes, and immutable) is written once, at
        // the insert, into spec_json; state_json then holds only the progress, so a decision writes a
        // few hundred bytes instead of the whole definition again. Both are UTF-8 BLOBs from now on.
        // Rows written before get their spec copied out of their whole state (which stays as it is
        // until their next decision replaces it with progress: a whole state is valid progress).
        """
        ALTER TABLE transactions ADD COLUMN spec_json BLOB NULL;
        UPDATE transactions SET spec_json = json_extract(state_json, '$.spec');
        """,
        // 6: The journal without AUTOINCREMENT: a plain INTEGER PRIMARY KEY is the rowid (max + 1),
        // which spares every journal row a write to sqlite_sequence. A seq freed by retention at the
        // very end of the table may be given again; seqs order one transaction's entries and are
        // never compared across transactions.
        """
        CREATE TABLE journal_v6 (
            seq         INTEGER PRIMARY KEY,
            gid         TEXT    NOT NULL,
            at          INTEGER NOT NULL,
            kind        TEXT    NOT NULL,
            branch      TEXT    NULL,
            op          TEXT    NULL,
            attempt     INTEGER NULL,
            status_code INTEGER NULL,
            detail      TEXT    NULL,
            duration_ms INTEGER NULL,
            body        TEXT    NULL
        );
        INSERT INTO journal_v6 (seq, gid, at, kind, branch, op, attempt, status_code, detail, duration_ms, body)
            SELECT seq, gid, at, kind, branch, op, attempt, status_code, detail, duration_ms, body FROM journal;
        DROP TABLE journal;
        ALTER TABLE journal_v6 RENAME TO journal;
        CREATE INDEX ix_journal_gid ON journal (gid, seq);
        DELETE FROM sqlite_sequence WHERE name = 'journal';
        """,
        // 7: Every transaction gets an integer id (an alias of the rowid, so it never changes, also not
        // under VACUUM), and the journal names its transaction by that id rather than by gid. Ids
        // grow with time, so the journal index entries of the transactions in flight are neighbours
        // at the end of the index: a batch of decisions dirties a page or two of it, where an index
        // on the gid (random, or at best one run per client) dirtied one page per transaction. Every
        // dirty page is written to the WAL at each commit and again at the checkpoint. The journal
        // rows lose their copy of the gid too (~50 bytes each, eight rows per 3-step saga).
        $"""
        CREATE TABLE transactions_v7 (
            id           INTEGER PRIMARY KEY,
            gid          TEXT    NOT NULL UNIQUE,
            protocol     TEXT    NOT NULL,
            status       TEXT    NOT NULL,
            stuck        INTEGER NOT NULL,
            created_at   INTEGER NOT NULL,
            updated_at   INTEGER NOT NULL,
            next_wake_at INTEGER NULL,
            fingerprint  TEXT    NOT NULL,
            version      INTEGER NOT NULL,
            state_json   BLOB    NOT NULL,
            owner        TEXT    NULL,
            epoch        INTEGER NOT NULL DEFAULT 0,
            lease_until  INTEGER NULL,
            spec_json    BLOB    NULL
        );
        INSERT INTO transactions_v7 (id, gid, protocol, status, stuck, created_at, updated_at, next_wake_at, fingerprint, version, state_json, owner, epoch, lease_until, spec_json)
            SELECT rowid, gid, protocol, status, stuck, created_at, updated_at, next_wake_at, fingerprint, version, state_json, owner, epoch, lease_until, spec_json FROM transactions ORDER BY rowid;
        CREATE TABLE journal_v7 (
            seq         INTEGER PRIMARY KEY,
            tx          INTEGER NOT NULL,
            at          INTEGER NOT NULL,
            kind        TEXT    NOT NULL,
            branch      TEXT    NULL,
            op          TEXT    NULL,
            attempt     INTEGER NULL,
            status_code INTEGER NULL,
            detail      TEXT    NULL,
            duration_ms INTEGER NULL,
            body        TEXT    NULL
        );
        INSERT INTO journal_v7 (seq, tx, at, kind, branch, op, attempt, status_code, detail, duration_ms, body)
            SELECT j.seq, t.id, j.at, j.kind, j.branch, j.op, j.attempt, j.status_code, j.detail, j.duration_ms, j.body
            FROM journal j JOIN transactions_v7 t ON t.gid = j.gid ORDER BY j.seq;
        DROP TABLE journal;
        DROP TABLE transactions;
        ALTER TABLE transactions_v7 RENAME TO transactions;
        ALTER TABLE journal_v7 RENAME TO journal;
        CREATE INDEX ix_transactions_created ON transactions (created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_status_created ON transactions (status, created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_stuck_created ON transactions (created_at DESC, gid DESC) WHERE stuck = 1;
        CREATE INDEX ix_transactions_due ON transactions ({DueKey}, gid) WHERE {NonTerminal};
        CREATE INDEX ix_transactions_finished ON transactions (updated_at, gid) WHERE {Terminal};
        CREATE INDEX ix_journal_tx ON journal (tx, seq);
        """,
    ];

    /// <summary>The version this build creates and understands.</summary>
    public static int CurrentVersion => Migrations.Length;

    /// <summary>Brings the database to <see cref="CurrentVersion"/>; returns the versions it applied.</summary>
    public static IReadOnlyList<int> Migrate(SqliteConnection connection)
    {
        var applied = new List<int>();
        while (true)
        {
            using var transaction = connection.BeginTransaction(deferred: false);
            var version = ReadVersion(connection, transaction);
            if (version > CurrentVersion)
            {
                throw new InvalidOperationException(
                    $"The database has schema version {version}, newer than the {CurrentVersion} this build of Treaty understands; upgrade Treaty.");
            }

            if (version == CurrentVersion)
            {
                transaction.Commit();
                return applied;
            }

            using (var migrate = connection.CreateCommand())
            {
                migrate.Transaction = transaction;
                // PRAGMA takes no parameters; the value is our own integer, not input.
                migrate.CommandText = Migrations[version] + $"\nPRAGMA user_version = {(version + 1).ToString(CultureInfo.InvariantCulture)};";
                migrate.ExecuteNonQuery();
            }

            transaction.Commit();
            applied.Add(version + 1);
        }
    }

    public static int ReadVersion(SqliteConnection connection, SqliteTransaction? transaction = null)
    {
        using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = "PRAGMA user_version;";
        return Convert.ToInt32(command.ExecuteScalar(), CultureInfo.InvariantCulture);
    }

    public static string ConnectionString(string path)
    {
        SqliteLibrary.EnsureConfigured();
        return new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            // The store keeps its own connections (one writer, a pool of readers), so it can close
            // every handle on dispose; the driver's pool would keep the file open after that.
            Pooling = false,
        }.ToString();
    }

    /// <summary>Opens the one writer connection: WAL so readers never block it, FULL so a commit is on disk.</summary>
    public static SqliteConnection OpenWriter(string path)
    {
        var connection = new SqliteConnection(ConnectionString(path));
        try
        {
            connection.Open();
            var mode = Pragma(connection, "PRAGMA journal_mode = WAL;");
            if (!string.Equals(mode, "wal", StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidOperationException($"SQLite refused write-ahead logging for '{path}' (journal_mode is '{mode}'); the store needs a local file system.");
            }

            Pragma(connection, "PRAGMA synchronous = FULL;");
            Pragma(connection, BusyTimeoutPragma);
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>Opens a reader connection; it refuses writes, so only the writer ever changes the file.</summary>
    public static SqliteConnection OpenReader(string path)
    {
        var connection = new SqliteConnection(ConnectionString(path));
        try
        {
            connection.Open();
            Pragma(connection, BusyTimeoutPragma);
            Pragma(connection, "PRAGMA query_only = 1;");
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    public static string? Pragma(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        return Convert.ToString(command.ExecuteScalar(), CultureInfo.InvariantCulture);
    }

    private static readonly string BusyTimeoutPragma =
        $"PRAGMA busy_timeout = {SqliteStoreDefaults.BusyTimeoutMs.ToString(CultureInfo.InvariantCulture)};";
}
