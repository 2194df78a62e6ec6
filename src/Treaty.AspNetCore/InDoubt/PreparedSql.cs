using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>
/// The prepared table (<c>treaty_prepared</c>) and its statements, per dialect. One row per
/// (gid, branch) that voted YES in 2PC or 3PC and has not heard the outcome yet; it is written and
/// deleted by the barrier in the same local transaction as the handler's writes, so "the
/// participant holds a reservation" and "the participant knows it is in doubt" are one fact.
/// Times are Unix milliseconds of the kit's <see cref="TimeProvider"/>.
/// </summary>
internal static class PreparedSql
{
    public const string Table = "treaty_prepared";

    // endpoint: the name (by default the route pattern) of the endpoint whose handler runs the
    // outcome when the resolver decides it.
    // xact and answer: PostgreSQL native prepared transactions only (the transaction's name, and the
    // prepare's answer, which a duplicate prepare gets while the answer's own barrier row is inside
    // the prepared transaction, invisible).
    public const string SqliteSchema = """
        CREATE TABLE IF NOT EXISTS treaty_prepared (
            gid TEXT NOT NULL,
            branch TEXT NOT NULL,
            stage TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            payload TEXT NOT NULL,
            since INTEGER NOT NULL,
            next_check_at INTEGER NOT NULL,
            checks INTEGER NOT NULL,
            xact TEXT NULL,
            answer TEXT NULL,
            PRIMARY KEY (gid, branch)
        );
        CREATE INDEX IF NOT EXISTS treaty_prepared_next_check_at ON treaty_prepared (next_check_at);
        """;

    public const string PostgreSqlSchema = """
        CREATE TABLE IF NOT EXISTS treaty_prepared (
            gid text NOT NULL,
            branch text NOT NULL,
            stage text NOT NULL,
            endpoint text NOT NULL,
            payload text NOT NULL,
            since bigint NOT NULL,
            next_check_at bigint NOT NULL,
            checks integer NOT NULL,
            xact text NULL,
            answer text NULL,
            PRIMARY KEY (gid, branch)
        );
        CREATE INDEX IF NOT EXISTS treaty_prepared_next_check_at ON treaty_prepared (next_check_at);
        """;

    /// <summary>Enters (or moves to) a stage: the doubt starts now, first check due after the resolver's <c>After</c>.</summary>
    public const string Upsert = """
        INSERT INTO treaty_prepared (gid, branch, stage, endpoint, payload, since, next_check_at, checks, xact, answer)
        VALUES (@gid, @branch, @stage, @endpoint, @payload, @since, @since, 0, @xact, @answer)
        ON CONFLICT (gid, branch) DO UPDATE SET
            stage = excluded.stage, endpoint = excluded.endpoint, payload = excluded.payload,
            since = excluded.since, next_check_at = excluded.next_check_at, checks = 0,
            xact = excluded.xact, answer = excluded.answer
        """;

    public const string Delete = "DELETE FROM treaty_prepared WHERE gid = @gid AND branch = @branch";

    public const string SelectOne =
        "SELECT stage, xact, answer FROM treaty_prepared WHERE gid = @gid AND branch = @branch";

    public const string SelectDue = """
        SELECT gid, branch, stage, endpoint, payload, since, checks, xact
        FROM treaty_prepared
        WHERE since <= @cutoff AND next_check_at <= @now
        ORDER BY next_check_at, gid, branch
        LIMIT @limit
        """;

    // Only the row as it was read: a row renewed meanwhile (a preCommit moved its stage, a new
    // prepare of a reused gid) keeps its own schedule.
    public const string Reschedule = """
        UPDATE treaty_prepared SET checks = checks + 1, next_check_at = @next_check_at
        WHERE gid = @gid AND branch = @branch AND stage = @stage AND since = @since
        """;

    public static string Schema(SqlDialect dialect) => dialect switch
    {
        SqlDialect.Sqlite => SqliteSchema,
        SqlDialect.PostgreSql => PostgreSqlSchema,
        _ => throw new ArgumentOutOfRangeException(nameof(dialect), dialect, null),
    };
}
