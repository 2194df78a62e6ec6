using System.Buffers.Binary;
using System.Data.Common;
using System.Security.Cryptography;
using System.Text;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Barrier;

/// <summary>The barrier table and its statements, per dialect.</summary>
internal static class BarrierSql
{
    public const string Table = "treaty_barrier";

    // One row per (gid, branch, op): the first answer, replayed to every duplicate. The primary key
    // also backs up the (gid, branch) lock: two first deliveries can never both be recorded.
    public const string SqliteSchema = """
        CREATE TABLE IF NOT EXISTS treaty_barrier (
            gid TEXT NOT NULL,
            branch TEXT NOT NULL,
            op TEXT NOT NULL,
            outcome TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            body TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (gid, branch, op)
        );
        CREATE INDEX IF NOT EXISTS treaty_barrier_recorded_at ON treaty_barrier (recorded_at)
        """;

    public const string PostgreSqlSchema = """
        CREATE TABLE IF NOT EXISTS treaty_barrier (
            gid text NOT NULL,
            branch text NOT NULL,
            op text NOT NULL,
            outcome text NOT NULL,
            status_code integer NOT NULL,
            body text NOT NULL,
            recorded_at timestamptz NOT NULL,
            PRIMARY KEY (gid, branch, op)
        )
        """;

    // The retention's index, on its own (see BarrierSchemaInitializer): PostgreSQL's CREATE INDEX takes
    // a SHARE lock on the table before it looks for the name, even with IF NOT EXISTS, and a prepared
    // transaction (PREPARE TRANSACTION) holding barrier rows would block every start until it is
    // resolved — by the resolver, which only runs once the start is over. So: look first, create only
    // when missing, and give up after a short lock wait (the index comes at a later start).
    public const string PostgreSqlRecordedAtIndex = """
        SET LOCAL lock_timeout = '2s';
        DO $$
        BEGIN
            IF to_regclass('treaty_barrier_recorded_at') IS NULL THEN
                CREATE INDEX treaty_barrier_recorded_at ON treaty_barrier (recorded_at);
            END IF;
        END $$
        """;

    public const string SelectBranch =
        "SELECT op, outcome, status_code, body FROM treaty_barrier WHERE gid = @gid AND branch = @branch";

    public const string Insert = """
        INSERT INTO treaty_barrier (gid, branch, op, outcome, status_code, body, recorded_at)
        VALUES (@gid, @branch, @op, @outcome, @status_code, @body, @recorded_at)
        """;

    // Retention: a branch's rows go together, and only when every one of them is older than the
    // cutoff, so the barrier never sees half a history (a compensation row without its action's
    // would answer a late action as if it had never run). The batch bounds the candidate rows.
    // SQLite keeps recorded_at as the driver's text form of a UTC DateTimeOffset
    // ("yyyy-MM-dd HH:mm:ss.FFFFFFF+00:00"), which sorts as the instants do ('+' sorts before
    // '.' and the digits), so comparing it with a UTC parameter in the same form is exact.
    public const string PurgeOlderThan = """
        DELETE FROM treaty_barrier WHERE (gid, branch) IN (
            SELECT old.gid, old.branch FROM treaty_barrier old
            WHERE old.recorded_at < @cutoff
              AND NOT EXISTS (
                SELECT 1 FROM treaty_barrier newer
                WHERE newer.gid = old.gid AND newer.branch = old.branch AND newer.recorded_at >= @cutoff)
            ORDER BY old.recorded_at
            LIMIT @limit)
        """;

    // READ COMMITTED lets two transactions read "no rows" for one (gid, branch) at once; a
    // transaction-scoped advisory lock on the pair makes the second wait until the first commits,
    // and its next statement then sees the first one's rows. A hash collision only serializes two
    // unrelated pairs; it never merges their rows.
    public const string PostgreSqlLock = "SELECT pg_advisory_xact_lock(@key)";

    /// <summary>
    /// Runs <paramref name="select"/> (<see cref="SelectBranch"/>) and returns the rows of one
    /// (gid, branch) as the rules need them, and the stored answer of <paramref name="op"/> if it has one.
    /// </summary>
    public static async Task<(List<BarrierRecord> Records, BranchResult? Stored)> ReadBranchAsync(DbCommand select, string op, CancellationToken cancellationToken)
    {
        var records = new List<BarrierRecord>();
        BranchResult? stored = null;
        await using var reader = await select.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var recorded = reader.GetString(0);
            records.Add(new BarrierRecord(recorded, BarrierRules.FromColumn(reader.GetString(1))));
            if (string.Equals(recorded, op, StringComparison.Ordinal))
            {
                stored = BranchResult.Stored(reader.GetInt32(2), reader.GetString(3));
            }
        }

        return (records, stored);
    }

    public static string Schema(SqlDialect dialect) => dialect switch
    {
        SqlDialect.Sqlite => SqliteSchema,
        SqlDialect.PostgreSql => PostgreSqlSchema,
        _ => throw new ArgumentOutOfRangeException(nameof(dialect), dialect, null),
    };

    /// <summary>The advisory lock key of a (gid, branch): the first 8 bytes of a SHA-256 of both, length-prefixed so no two pairs share an input.</summary>
    public static long LockKey(string gid, string branch)
    {
        var input = Encoding.UTF8.GetBytes($"treaty-barrier\n{gid.Length}\n{gid}\n{branch}");
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(input, hash);
        return BinaryPrimitives.ReadInt64BigEndian(hash);
    }
}
