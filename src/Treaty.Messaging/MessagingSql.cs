using System.Data.Common;
using System.Globalization;
using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>The kit's tables (and the reports', <see cref="ReportSql"/>) and the statements on them, per dialect.</summary>
internal static class MessagingSql
{
    // The outbox: one row per published message, written in the publisher's own transaction.
    // seq orders the relay's reads; sent_at is set only after the transport accepted the row.
    private const string SqliteOutbox = """
        CREATE TABLE IF NOT EXISTS treaty_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            body TEXT NOT NULL,
            trace_parent TEXT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            sent_at TEXT NULL,
            send_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NULL,
            last_error TEXT NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_outbox_unsent ON treaty_outbox (seq) WHERE sent_at IS NULL;
        """;

    private const string PostgreSqlOutbox = """
        CREATE TABLE IF NOT EXISTS treaty_outbox (
            seq bigserial PRIMARY KEY,
            message_id text NOT NULL UNIQUE,
            type text NOT NULL,
            correlation_id text NOT NULL,
            body text NOT NULL,
            trace_parent text NULL,
            source text NOT NULL,
            created_at timestamptz NOT NULL,
            sent_at timestamptz NULL,
            send_attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NULL,
            last_error text NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_outbox_unsent ON treaty_outbox (seq) WHERE sent_at IS NULL;
        """;

    // The inbox: (subscriber, message id) of every message handled, committed with its effects.
    // The attempts: every failed handling, durable across restarts; archived = 1 once an operator
    // replayed the message (the count starts again, the history stays).
    // The dead letters: the whole message, the final error; status dead | replaying | replayed.
    private const string SqliteConsumer = """
        CREATE TABLE IF NOT EXISTS treaty_inbox (
            subscriber TEXT NOT NULL,
            message_id TEXT NOT NULL,
            type TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            handled_at TEXT NOT NULL,
            PRIMARY KEY (subscriber, message_id)
        );
        CREATE TABLE IF NOT EXISTS treaty_attempts (
            subscriber TEXT NOT NULL,
            message_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            attempted_at TEXT NOT NULL,
            error TEXT NOT NULL,
            archived INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (subscriber, message_id, seq)
        );
        CREATE TABLE IF NOT EXISTS treaty_dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            subscriber TEXT NOT NULL,
            message_id TEXT NOT NULL,
            type TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            body TEXT NOT NULL,
            trace_parent TEXT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            error TEXT NOT NULL,
            dead_lettered_at TEXT NOT NULL,
            status TEXT NOT NULL,
            next_attempt_at TEXT NULL,
            replayed_at TEXT NULL,
            UNIQUE (subscriber, message_id)
        );
        """;

    private const string PostgreSqlConsumer = """
        CREATE TABLE IF NOT EXISTS treaty_inbox (
            subscriber text NOT NULL,
            message_id text NOT NULL,
            type text NOT NULL,
            correlation_id text NOT NULL,
            handled_at timestamptz NOT NULL,
            PRIMARY KEY (subscriber, message_id)
        );
        CREATE TABLE IF NOT EXISTS treaty_attempts (
            subscriber text NOT NULL,
            message_id text NOT NULL,
            seq integer NOT NULL,
            attempted_at timestamptz NOT NULL,
            error text NOT NULL,
            archived integer NOT NULL DEFAULT 0,
            PRIMARY KEY (subscriber, message_id, seq)
        );
        CREATE TABLE IF NOT EXISTS treaty_dead_letters (
            id bigserial PRIMARY KEY,
            subscriber text NOT NULL,
            message_id text NOT NULL,
            type text NOT NULL,
            correlation_id text NOT NULL,
            body text NOT NULL,
            trace_parent text NULL,
            source text NOT NULL,
            created_at timestamptz NOT NULL,
            error text NOT NULL,
            dead_lettered_at timestamptz NOT NULL,
            status text NOT NULL,
            next_attempt_at timestamptz NULL,
            replayed_at timestamptz NULL,
            UNIQUE (subscriber, message_id)
        );
        """;

    public static string Schema(SqlDialect dialect) => dialect switch
    {
        SqlDialect.Sqlite => SqliteOutbox + SqliteConsumer + ReportSql.Schema(dialect),
        SqlDialect.PostgreSql => PostgreSqlOutbox + PostgreSqlConsumer + ReportSql.Schema(dialect),
        _ => throw new ArgumentOutOfRangeException(nameof(dialect), dialect, null),
    };

    public const string InsertOutbox = """
        INSERT INTO treaty_outbox (message_id, type, correlation_id, body, trace_parent, source, created_at)
        VALUES (@message_id, @type, @correlation_id, @body, @trace_parent, @source, @created_at)
        """;

    // Rows whose last send failed wait for their next_attempt_at; the others go in publication order.
    public const string SelectDue = """
        SELECT seq, message_id, type, correlation_id, body, trace_parent, source, created_at, send_attempts
        FROM treaty_outbox WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= @now)
        ORDER BY seq LIMIT @limit
        """;

    public const string NextDue =
        "SELECT MIN(next_attempt_at) FROM treaty_outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL";

    public const string MarkSent = "UPDATE treaty_outbox SET sent_at = @now WHERE seq = @seq";

    public const string RecordSendFailure =
        "UPDATE treaty_outbox SET send_attempts = send_attempts + 1, last_error = @error, next_attempt_at = @next WHERE seq = @seq";

    // ON CONFLICT DO NOTHING: the primary key decides, so two concurrent deliveries of one message
    // cannot both pass (the second waits for the first's commit, then inserts nothing).
    public const string InsertInbox = """
        INSERT INTO treaty_inbox (subscriber, message_id, type, correlation_id, handled_at)
        VALUES (@subscriber, @message_id, @type, @correlation_id, @now)
        ON CONFLICT (subscriber, message_id) DO NOTHING
        """;

    public const string CountAttempts =
        "SELECT COUNT(*) FROM treaty_attempts WHERE subscriber = @subscriber AND message_id = @message_id AND archived = 0";

    public const string NextAttemptSeq =
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM treaty_attempts WHERE subscriber = @subscriber AND message_id = @message_id";

    public const string InsertAttempt = """
        INSERT INTO treaty_attempts (subscriber, message_id, seq, attempted_at, error)
        VALUES (@subscriber, @message_id, @seq, @now, @error)
        """;

    public const string UpsertDeadLetter = """
        INSERT INTO treaty_dead_letters (subscriber, message_id, type, correlation_id, body, trace_parent, source, created_at, error, dead_lettered_at, status)
        VALUES (@subscriber, @message_id, @type, @correlation_id, @body, @trace_parent, @source, @created_at, @error, @now, 'dead')
        ON CONFLICT (subscriber, message_id) DO UPDATE SET error = excluded.error, dead_lettered_at = excluded.dead_lettered_at, status = 'dead', next_attempt_at = NULL
        """;

    public const string DeadLetterColumns =
        "id, subscriber, message_id, type, correlation_id, body, trace_parent, source, created_at, error, dead_lettered_at, status, replayed_at";

    public const string SelectAttempts = """
        SELECT seq, attempted_at, error, archived FROM treaty_attempts
        WHERE subscriber = @subscriber AND message_id = @message_id ORDER BY seq
        """;

    public const string ArchiveAttempts =
        "UPDATE treaty_attempts SET archived = 1 WHERE subscriber = @subscriber AND message_id = @message_id AND archived = 0";

    public const string MarkReplaying =
        "UPDATE treaty_dead_letters SET status = 'replaying', next_attempt_at = @now WHERE id = @id AND status = 'dead'";

    public const string SelectDueReplays =
        "SELECT " + DeadLetterColumns + " FROM treaty_dead_letters WHERE subscriber = @subscriber AND status = 'replaying' AND next_attempt_at <= @now ORDER BY id";

    public const string MarkReplayed =
        "UPDATE treaty_dead_letters SET status = 'replayed', replayed_at = @now, next_attempt_at = NULL WHERE id = @id AND status = 'replaying'";

    public const string PostponeReplay =
        "UPDATE treaty_dead_letters SET next_attempt_at = @next WHERE id = @id AND status = 'replaying'";

    /// <summary>A time as the dialect stores it: ISO 8601 UTC text (fixed width, so it sorts) in SQLite, timestamptz in PostgreSQL.</summary>
    public static object Time(SqlDialect dialect, DateTimeOffset time) => dialect == SqlDialect.Sqlite
        ? time.UtcDateTime.ToString("O", CultureInfo.InvariantCulture)
        : time.ToUniversalTime();

    public static DateTimeOffset ReadTime(DbDataReader reader, int ordinal) => reader.GetValue(ordinal) switch
    {
        string text => DateTimeOffset.Parse(text, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind),
        DateTime time => new DateTimeOffset(DateTime.SpecifyKind(time, DateTimeKind.Utc)),
        DateTimeOffset time => time,
        var other => throw new InvalidOperationException($"Unexpected time column type {other.GetType()}."),
    };

    public static DateTimeOffset? ReadNullableTime(DbDataReader reader, int ordinal) =>
        reader.IsDBNull(ordinal) ? null : ReadTime(reader, ordinal);
}
