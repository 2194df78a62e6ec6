using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>The semantic lock table and its statements, per dialect.</summary>
internal static class SemanticLockSql
{
    public const string SqliteSchema = """
        CREATE TABLE IF NOT EXISTS treaty_semantic_locks (
            resource TEXT NOT NULL PRIMARY KEY,
            gid TEXT NOT NULL,
            since TEXT NOT NULL,
            expires_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_semantic_locks_gid ON treaty_semantic_locks (gid);
        """;

    public const string PostgreSqlSchema = """
        CREATE TABLE IF NOT EXISTS treaty_semantic_locks (
            resource text NOT NULL PRIMARY KEY,
            gid text NOT NULL,
            since timestamptz NOT NULL,
            expires_at timestamptz NOT NULL
        );
        CREATE INDEX IF NOT EXISTS treaty_semantic_locks_gid ON treaty_semantic_locks (gid);
        """;

    public const string InsertIfFree = """
        INSERT INTO treaty_semantic_locks (resource, gid, since, expires_at)
        VALUES (@resource, @gid, @since, @expires_at)
        ON CONFLICT (resource) DO NOTHING
        """;

    public const string Select = "SELECT gid, since, expires_at FROM treaty_semantic_locks WHERE resource = @resource";

    public const string Update = "UPDATE treaty_semantic_locks SET gid = @gid, since = @since, expires_at = @expires_at WHERE resource = @resource";

    public const string Delete = "DELETE FROM treaty_semantic_locks WHERE resource = @resource AND gid = @gid";

    public const string DeleteAll = "DELETE FROM treaty_semantic_locks WHERE gid = @gid";

    public static string Schema(SqlDialect dialect) => dialect switch
    {
        SqlDialect.Sqlite => SqliteSchema,
        SqlDialect.PostgreSql => PostgreSqlSchema,
        _ => throw new ArgumentOutOfRangeException(nameof(dialect), dialect, null),
    };

    // SQLite has no FOR UPDATE and needs none: BEGIN IMMEDIATE holds the write lock. On PostgreSQL
    // the row lock keeps a concurrent takeover or release out until this transaction ends.
    public static string SelectForUpdate(SqlDialect dialect) => dialect == SqlDialect.PostgreSql ? Select + " FOR UPDATE" : Select;
}
