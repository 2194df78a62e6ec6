using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>
/// The reports table: one row per published event the coordinator should hear of, written in the
/// publisher's transaction with the outbox row; <c>reported_at</c> is set once the coordinator
/// answered (<c>result</c>: recorded, duplicate, ignored, or refused for good).
/// </summary>
internal static class ReportSql
{
    private const string Sqlite = """
        CREATE TABLE IF NOT EXISTS treaty_reports (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            service TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            outcome TEXT NULL,
            timeout_ms INTEGER NULL,
            created_at TEXT NOT NULL,
            reported_at TEXT NULL,
            result TEXT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NULL,
            last_error TEXT NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_reports_unreported ON treaty_reports (seq) WHERE reported_at IS NULL;
        """;

    private const string PostgreSql = """
        CREATE TABLE IF NOT EXISTS treaty_reports (
            seq bigserial PRIMARY KEY,
            message_id text NOT NULL UNIQUE,
            type text NOT NULL,
            service text NOT NULL,
            correlation_id text NOT NULL,
            payload text NOT NULL,
            outcome text NULL,
            timeout_ms bigint NULL,
            created_at timestamptz NOT NULL,
            reported_at timestamptz NULL,
            result text NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NULL,
            last_error text NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_reports_unreported ON treaty_reports (seq) WHERE reported_at IS NULL;
        """;

    public static string Schema(SqlDialect dialect) => dialect switch
    {
        SqlDialect.Sqlite => Sqlite,
        SqlDialect.PostgreSql => PostgreSql,
        _ => throw new ArgumentOutOfRangeException(nameof(dialect), dialect, null),
    };

    public const string Insert = """
        INSERT INTO treaty_reports (message_id, type, service, correlation_id, payload, outcome, timeout_ms, created_at)
        VALUES (@message_id, @type, @service, @correlation_id, @payload, @outcome, @timeout_ms, @created_at)
        """;

    public const string SelectDue = """
        SELECT seq, message_id, type, service, correlation_id, payload, outcome, timeout_ms, created_at, attempts
        FROM treaty_reports WHERE reported_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= @now)
        ORDER BY seq LIMIT @limit
        """;

    public const string NextDue =
        "SELECT MIN(next_attempt_at) FROM treaty_reports WHERE reported_at IS NULL AND next_attempt_at IS NOT NULL";

    public const string MarkReported =
        "UPDATE treaty_reports SET reported_at = @now, result = @result, last_error = @error, next_attempt_at = NULL WHERE seq = @seq";

    // The coordinator answered: the rows backing off because it could not be reached go at once.
    public const string ReleaseBackedOff =
        "UPDATE treaty_reports SET next_attempt_at = NULL WHERE reported_at IS NULL AND next_attempt_at > @now";

    public const string RecordFailure =
        "UPDATE treaty_reports SET attempts = attempts + 1, last_error = @error, next_attempt_at = @next WHERE seq = @seq";
}
