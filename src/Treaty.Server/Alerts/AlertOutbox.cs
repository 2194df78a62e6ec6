using System.Data.Common;
using Microsoft.Data.Sqlite;

namespace Treaty.Server.Alerts;

/// <summary>One recorded alert as the outbox holds it.</summary>
internal sealed record AlertRow(long Seq, string Id, string Gid, string Kind, int Episode, string Body, int Attempts, DateTimeOffset? DeliveredAt, string? LastError)
{
    /// <summary>The rows of a query that selects the outbox's columns in this record's order (either outbox).</summary>
    public static async Task<List<AlertRow>> ReadAllAsync(DbCommand command, CancellationToken cancellationToken)
    {
        var rows = new List<AlertRow>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            rows.Add(new AlertRow(
                reader.GetInt64(0), reader.GetString(1), reader.GetString(2), reader.GetString(3), reader.GetInt32(4), reader.GetString(5), reader.GetInt32(6),
                reader.IsDBNull(7) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(7)),
                reader.IsDBNull(8) ? null : reader.GetString(8)));
        }

        return rows;
    }
}

/// <summary>
/// The alerts to deliver, durable: an alert is recorded once (its id is unique) and stays until the
/// webhook accepted it, across restarts. Each coordinator has one, used by its
/// <see cref="AlertMonitor"/>'s loop only; coordinators sharing a database share its outbox, so a
/// stuck transaction taken over by another instance is not alerted twice.
/// </summary>
internal interface IAlertOutbox : IAsyncDisposable
{
    /// <summary>The last stuck episode recorded for <paramref name="gid"/> and whether it was resolved.</summary>
    Task<AlertLedger> LedgerAsync(string gid, CancellationToken cancellationToken);

    /// <summary>Records an alert unless one with its id exists; true when it was new.</summary>
    Task<bool> AddAsync(string id, string gid, string kind, int episode, string body, DateTimeOffset now, CancellationToken cancellationToken);

    /// <summary>Gids with a stuck episode whose resolution is not recorded yet.</summary>
    Task<IReadOnlyList<string>> OpenEpisodesAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Undelivered alerts due by <paramref name="now"/>, oldest first, none behind an undelivered
    /// earlier alert of the same transaction (a receiver never sees "resolved" before its "stuck"),
    /// and none another coordinator is delivering; this one delivers them now.
    /// </summary>
    Task<IReadOnlyList<AlertRow>> ClaimDueAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken);

    /// <summary>Every alert, oldest first (operators and tests).</summary>
    Task<IReadOnlyList<AlertRow>> AllAsync(CancellationToken cancellationToken);

    /// <summary>When the next alert that <see cref="ClaimDueAsync"/> could give is due, or null when none is waiting.</summary>
    Task<DateTimeOffset?> NextDueAsync(CancellationToken cancellationToken);

    Task MarkDeliveredAsync(long seq, int attempts, DateTimeOffset now, CancellationToken cancellationToken);

    Task MarkFailedAsync(long seq, int attempts, DateTimeOffset nextAt, string error, CancellationToken cancellationToken);
}

/// <summary>
/// The outbox of a coordinator on SQLite: <c>alerts.db</c> beside the store (one coordinator per
/// store file, so nobody else delivers from it). One connection.
/// </summary>
internal sealed class AlertOutbox : IAlertOutbox
{
    private const string Schema = """
        CREATE TABLE IF NOT EXISTS alerts (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            gid TEXT NOT NULL,
            kind TEXT NOT NULL,
            episode INTEGER NOT NULL,
            body TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at INTEGER NOT NULL,
            delivered_at INTEGER,
            last_error TEXT
        );
        CREATE INDEX IF NOT EXISTS alerts_by_gid ON alerts (gid, kind, episode);
        CREATE INDEX IF NOT EXISTS alerts_due ON alerts (next_at) WHERE delivered_at IS NULL;
        """;

    private readonly SqliteConnection _connection;
    private readonly string _connectionString;

    private AlertOutbox(SqliteConnection connection, string connectionString)
    {
        _connection = connection;
        _connectionString = connectionString;
    }

    public static async Task<AlertOutbox> OpenAsync(string path, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var connectionString = new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString();
        var connection = new SqliteConnection(connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await ExecuteAsync(connection, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;", cancellationToken);
            await ExecuteAsync(connection, Schema, cancellationToken);
            return new AlertOutbox(connection, connectionString);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    public async Task<AlertLedger> LedgerAsync(string gid, CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = """
            SELECT s.episode, EXISTS (SELECT 1 FROM alerts r WHERE r.gid = s.gid AND r.kind = 'resolved' AND r.episode = s.episode)
            FROM alerts s WHERE s.gid = $gid AND s.kind = 'stuck' ORDER BY s.episode DESC LIMIT 1
            """;
        command.Parameters.AddWithValue("$gid", gid);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken)
            ? new AlertLedger(reader.GetInt32(0), reader.GetBoolean(1))
            : AlertLedger.None;
    }

    public async Task<bool> AddAsync(string id, string gid, string kind, int episode, string body, DateTimeOffset now, CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = """
            INSERT INTO alerts (id, gid, kind, episode, body, created_at, next_at) VALUES ($id, $gid, $kind, $episode, $body, $now, $now)
            ON CONFLICT (id) DO NOTHING
            """;
        command.Parameters.AddWithValue("$id", id);
        command.Parameters.AddWithValue("$gid", gid);
        command.Parameters.AddWithValue("$kind", kind);
        command.Parameters.AddWithValue("$episode", episode);
        command.Parameters.AddWithValue("$body", body);
        command.Parameters.AddWithValue("$now", now.ToUnixTimeMilliseconds());
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task<IReadOnlyList<string>> OpenEpisodesAsync(CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = """
            SELECT DISTINCT s.gid FROM alerts s WHERE s.kind = 'stuck'
            AND NOT EXISTS (SELECT 1 FROM alerts r WHERE r.gid = s.gid AND r.kind = 'resolved' AND r.episode = s.episode)
            """;
        var gids = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            gids.Add(reader.GetString(0));
        }

        return gids;
    }

    public Task<IReadOnlyList<AlertRow>> ClaimDueAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken) =>
        QueryAsync("""
            SELECT seq, id, gid, kind, episode, body, attempts, delivered_at, last_error FROM alerts a
            WHERE a.delivered_at IS NULL AND a.next_at <= $now
            AND NOT EXISTS (SELECT 1 FROM alerts b WHERE b.gid = a.gid AND b.seq < a.seq AND b.delivered_at IS NULL)
            ORDER BY a.seq LIMIT $limit
            """, now, limit, cancellationToken);

    /// <summary>
    /// Every alert, read on a connection of its own: the others serve only the monitor's loop, and
    /// this is called from outside it (operators, tests) while the loop runs. A SQLite connection
    /// serves one caller at a time (the store runs the library without a mutex per connection).
    /// </summary>
    public async Task<IReadOnlyList<AlertRow>> AllAsync(CancellationToken cancellationToken)
    {
        await using var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT seq, id, gid, kind, episode, body, attempts, delivered_at, last_error FROM alerts ORDER BY seq";
        return await AlertRow.ReadAllAsync(command, cancellationToken);
    }

    public async Task<DateTimeOffset?> NextDueAsync(CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        // Only the first undelivered alert of each transaction: the ones behind it wait for it, and
        // counting them would wake the loop for nothing, over and over, until it is delivered.
        command.CommandText = """
            SELECT MIN(a.next_at) FROM alerts a WHERE a.delivered_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM alerts b WHERE b.gid = a.gid AND b.seq < a.seq AND b.delivered_at IS NULL)
            """;
        var value = await command.ExecuteScalarAsync(cancellationToken);
        return value is long ms ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;
    }

    public async Task MarkDeliveredAsync(long seq, int attempts, DateTimeOffset now, CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = "UPDATE alerts SET delivered_at = $now, attempts = $attempts, last_error = NULL WHERE seq = $seq";
        command.Parameters.AddWithValue("$now", now.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$attempts", attempts);
        command.Parameters.AddWithValue("$seq", seq);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public async Task MarkFailedAsync(long seq, int attempts, DateTimeOffset nextAt, string error, CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = "UPDATE alerts SET attempts = $attempts, next_at = $next, last_error = $error WHERE seq = $seq";
        command.Parameters.AddWithValue("$attempts", attempts);
        command.Parameters.AddWithValue("$next", nextAt.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$error", error.Length > 500 ? error[..500] : error);
        command.Parameters.AddWithValue("$seq", seq);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public ValueTask DisposeAsync() => _connection.DisposeAsync();

    private async Task<IReadOnlyList<AlertRow>> QueryAsync(string sql, DateTimeOffset? now, int? limit, CancellationToken cancellationToken)
    {
        await using var command = _connection.CreateCommand();
        command.CommandText = sql;
        if (now is { } n)
        {
            command.Parameters.AddWithValue("$now", n.ToUnixTimeMilliseconds());
        }

        if (limit is { } l)
        {
            command.Parameters.AddWithValue("$limit", l);
        }

        return await AlertRow.ReadAllAsync(command, cancellationToken);
    }

    private static async Task ExecuteAsync(SqliteConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }
}
