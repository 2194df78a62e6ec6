namespace Treaty.Storage.PostgreSql;

/// <summary>
/// The schema, its migrations and every statement of the store, for one PostgreSQL schema. Table
/// names are qualified with the (validated, quoted) schema name; every value is a parameter.
/// </summary>
internal sealed class Sql
{
    /// <summary>Statuses the due-work index leaves out. Stored values; see <see cref="StoredValues"/>.</summary>
    public const string NonTerminal = "status NOT IN ('committed', 'aborted')";

    /// <summary>Statuses the finished index holds, spelled as in the index so the planner uses it.</summary>
    public const string Terminal = "status IN ('committed', 'aborted')";

    /// <summary>The sort key of due work: an unset wake-up time sorts first (ticks are never negative).</summary>
    public const string DueKey = "coalesce(next_wake_at, -1)";

    /// <summary>Key of the advisory lock that serializes migrations (with the schema's hash as the second half).</summary>
    public const int MigrationLockClass = 0x7472_7479; // "trty"

    public Sql(string schema)
    {
        Schema = schema;
        var s = $"\"{schema}\"";
        Transactions = $"{s}.transactions";
        Journal = $"{s}.journal";
        Version = $"{s}.treaty_schema";
        Channel = schema == PostgreSqlStoreDefaults.Schema ? "treaty_finished" : "treaty_finished_" + schema;
        var t = Transactions;
        var j = Journal;

        Migrations =
        [
            // 1: As in the SQLite store: the spec (branches, URLs, payload) is written once, by the
            // insert, into spec_json; branch progress lives inside state_json, so a decision is one
            // small row write plus its journal rows; the columns beside it copy what listings and
            // recovery filter on. Times are UTC ticks (exact: cursors and "since" never round). gid is
            // COLLATE "C" so that its order, the cursors and the comparisons are ordinal, like
            // everywhere else in Treaty. The JSON is bytea (UTF-8), not jsonb: the exact bytes come
            // back and nothing is parsed on write. lease_until is the DATABASE's time (timestamptz): a
            // lease is granted and checked by now() in SQL, never by a coordinator's clock.
            $"""
            CREATE TABLE {t} (
                gid          text COLLATE "C" NOT NULL PRIMARY KEY,
                protocol     text    NOT NULL,
                status       text    NOT NULL,
                stuck        boolean NOT NULL,
                created_at   bigint  NOT NULL,
                updated_at   bigint  NOT NULL,
                next_wake_at bigint  NULL,
                fingerprint  text    NOT NULL,
                version      bigint  NOT NULL,
                state_json   bytea   NOT NULL,
                spec_json    bytea   NOT NULL,
                owner        text    NULL,
                epoch        bigint  NOT NULL DEFAULT 0,
                lease_until  timestamptz NULL
            );
            CREATE INDEX ix_transactions_created ON {t} (created_at DESC, gid DESC);
            CREATE INDEX ix_transactions_status_created ON {t} (status, created_at DESC, gid DESC);
            CREATE INDEX ix_transactions_stuck_created ON {t} (created_at DESC, gid DESC) WHERE stuck;
            CREATE INDEX ix_transactions_due ON {t} (({DueKey}), gid) WHERE {NonTerminal};
            CREATE INDEX ix_transactions_finished ON {t} (updated_at, gid) WHERE {Terminal};
            CREATE TABLE {j} (
                seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                gid         text COLLATE "C" NOT NULL,
                at          bigint  NOT NULL,
                kind        text    NOT NULL,
                branch      text    NULL,
                op          text    NULL,
                attempt     integer NULL,
                status_code integer NULL,
                detail      text    NULL,
                duration_ms bigint  NULL,
                body        text    NULL
            );
            CREATE INDEX ix_journal_gid ON {j} (gid, seq);
            """,
        ];

        const string JournalColumns = "gid, at, kind, branch, op, attempt, status_code, detail, duration_ms, body";
        // The journal entries travel as one array per column; WITH ORDINALITY keeps their order, so
        // the identity hands out sequence numbers in the order the engine wrote them.
        const string JournalRows =
            """
            unnest(@j_at::bigint[], @j_kind::text[], @j_branch::text[], @j_op::text[], @j_attempt::integer[],
                   @j_status_code::integer[], @j_detail::text[], @j_duration_ms::bigint[], @j_body::text[])
                WITH ORDINALITY AS e(at, kind, branch, op, attempt, status_code, detail, duration_ms, body, ord)
            """;
        const string JournalSelect = "e.at, e.kind, e.branch, e.op, e.attempt, e.status_code, e.detail, e.duration_ms, e.body";

        // One statement, so the row and its journal are one implicit transaction and one round
        // trip; data-modifying CTEs always run, and the journal joins the insert's RETURNING, so a
        // conflicting insert writes no journal.
        Insert =
            $"""
            WITH i AS (
                INSERT INTO {t} (gid, protocol, status, stuck, created_at, updated_at, next_wake_at, fingerprint, version, state_json, spec_json, owner, epoch, lease_until)
                VALUES (@gid, @protocol, @status, @stuck, @created_at, @updated_at, @next_wake_at, @fingerprint, @version, @state_json, @spec_json,
                        @owner, @epoch, CASE WHEN @owner::text IS NULL THEN NULL ELSE now() + @lease END)
                ON CONFLICT (gid) DO NOTHING
                RETURNING gid),
            w AS (
                INSERT INTO {j} ({JournalColumns})
                SELECT i.gid, {JournalSelect} FROM i CROSS JOIN {JournalRows} ORDER BY e.ord)
            SELECT count(*) FROM i;
            """;

        // created_at, protocol and fingerprint never change after the insert. The fence: the
        // stored owner must be the writer's (both NULL for an unfenced write) at the writer's
        // epoch; a lease's expiry alone does not refuse the write, only a new claim (a new epoch)
        // does. A terminal write gives the lease up.
        Update =
            $"""
            WITH u AS (
                UPDATE {t}
                SET status = @status, stuck = @stuck, updated_at = @updated_at, next_wake_at = @next_wake_at,
                    version = @version, state_json = @state_json,
                    owner = CASE WHEN @terminal THEN NULL ELSE owner END,
                    lease_until = CASE WHEN @terminal THEN NULL ELSE lease_until END
                WHERE gid = @gid AND version = @expected_version
                  AND owner IS NOT DISTINCT FROM @fence_owner::text
                  AND (@fence_owner::text IS NULL OR epoch = @fence_epoch)
                RETURNING gid),
            w AS (
                INSERT INTO {j} ({JournalColumns})
                SELECT u.gid, {JournalSelect} FROM u CROSS JOIN {JournalRows} ORDER BY e.ord)
            SELECT count(*) FROM u;
            """;

        SelectFence = $"SELECT version, owner, epoch FROM {t} WHERE gid = @gid;";
        SelectState = $"SELECT spec_json, state_json FROM {t} WHERE gid = @gid;";

        // SKIP LOCKED: rows another claimer has locked are passed over, not waited for, so two
        // concurrent callers never get the same row and neither blocks on the other. The lease
        // check is by the database's clock.
        ClaimDue =
            $"""
            WITH c AS (
                UPDATE {t} AS t SET owner = @owner, epoch = t.epoch + 1, lease_until = now() + @lease
                FROM (
                    SELECT gid FROM {t}
                    WHERE {NonTerminal} AND {DueKey} <= @due_by AND (owner IS NULL OR lease_until <= now())
                    ORDER BY {DueKey}, gid
                    LIMIT @limit
                    FOR UPDATE SKIP LOCKED) AS d
                WHERE t.gid = d.gid
                RETURNING t.gid, t.epoch, coalesce(t.next_wake_at, -1) AS k)
            SELECT gid, epoch FROM c ORDER BY k, gid;
            """;

        ClaimOne =
            $"""
            UPDATE {t} SET owner = @owner, epoch = epoch + 1, lease_until = now() + @lease
            WHERE gid = @gid AND {NonTerminal}
              AND (@take_over OR owner IS NULL OR owner = @owner OR lease_until <= now())
            RETURNING epoch;
            """;

        // Renew and release go through the write queue, one statement in a batch of the instance's
        // decisions, and answer a count like every write there. Sent on a connection of their own,
        // they locked the instance's rows beside its batch, each waiting for a row the other held:
        // a deadlock, broken only after PostgreSQL's deadlock_timeout (1 s by default) with every
        // write of the instance stalled behind it (seen under load, with one coordinator and with three).
        Renew =
            $"""
            WITH r AS (
                UPDATE {t} AS t SET lease_until = now() + @lease
                FROM unnest(@gids::text[], @epochs::bigint[]) AS h(gid, epoch)
                WHERE t.gid = h.gid AND t.epoch = h.epoch AND t.owner = @owner
                RETURNING t.gid)
            SELECT count(DISTINCT gid) FROM r;
            """;

        // Which of the claims are still this owner's: a plain read, no lock (after a renew that did
        // not renew them all).
        SelectHeld =
            $"""
            SELECT DISTINCT t.gid FROM {t} AS t
            JOIN unnest(@gids::text[], @epochs::bigint[]) AS h(gid, epoch) ON t.gid = h.gid AND t.epoch = h.epoch
            WHERE t.owner = @owner;
            """;

        Release =
            $"""
            WITH r AS (
                UPDATE {t} AS t SET owner = NULL, lease_until = NULL
                FROM unnest(@gids::text[], @epochs::bigint[]) AS h(gid, epoch)
                WHERE t.gid = h.gid AND t.epoch = h.epoch AND t.owner = @owner
                RETURNING 1)
            SELECT count(*) FROM r;
            """;

        SelectJournal =
            $"""
            SELECT seq, at, kind, branch, op, attempt, status_code, detail, duration_ms, body
            FROM {j} WHERE gid = @gid ORDER BY seq;
            """;

        ListDue = $"SELECT gid FROM {t} WHERE {NonTerminal} AND {DueKey} <= @due_by ORDER BY {DueKey}, gid LIMIT @limit;";

        // The unfinished rows only (the due index's); a terminal write gives its lease up anyway.
        ListHolders =
            $"""
            SELECT owner, count(*), max(lease_until), max(lease_until) <= now()
            FROM {t} WHERE {NonTerminal} AND owner IS NOT NULL AND lease_until IS NOT NULL
            GROUP BY owner ORDER BY owner COLLATE "C";
            """;

        // One bounded statement: the oldest finished rows (SKIP LOCKED: two purgers split the work
        // instead of queueing), their journal, then the rows, the status checked again on delete.
        Purge =
            $"""
            WITH f AS (
                SELECT gid FROM {t} WHERE {Terminal} AND updated_at < @before
                ORDER BY updated_at, gid LIMIT @limit
                FOR UPDATE SKIP LOCKED),
            dj AS (DELETE FROM {j} WHERE gid IN (SELECT gid FROM f)),
            dt AS (DELETE FROM {t} WHERE gid IN (SELECT gid FROM f) AND {Terminal} RETURNING 1)
            SELECT count(*) FROM dt;
            """;

        ListFrom = $"SELECT created_at, gid, spec_json, state_json FROM {t} WHERE true";
        CountFrom = $"SELECT status, count(*) FROM {t} WHERE true";
        CountStuckFrom = $"SELECT count(*) FROM {t} WHERE true";
    }

    public string Schema { get; }

    public string Transactions { get; }

    public string Journal { get; }

    /// <summary>The one-row table holding the schema version.</summary>
    public string Version { get; }

    /// <summary>The notification channel of finished transactions (one per schema).</summary>
    public string Channel { get; }

    /// <summary>Migration i (0-based) moves the schema from version i to i + 1; appended, never edited.</summary>
    public IReadOnlyList<string> Migrations { get; }

    public string Insert { get; }

    public string Update { get; }

    public string SelectFence { get; }

    public string SelectState { get; }

    public string ClaimDue { get; }

    public string ClaimOne { get; }

    public string Renew { get; }

    public string Release { get; }

    /// <summary>The gids of the given claims still held by @owner at their epoch (no lock).</summary>
    public string SelectHeld { get; }

    public string SelectJournal { get; }

    public string ListDue { get; }

    /// <summary>Per owner of unfinished transactions: how many, the latest lease expiry, and whether it has passed.</summary>
    public string ListHolders { get; }

    public string Purge { get; }

    public string ListFrom { get; }

    public string CountFrom { get; }

    public string CountStuckFrom { get; }
}
