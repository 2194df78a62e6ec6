using Npgsql;
using NpgsqlTypes;

namespace Treaty.Server.Alerts;

/// <summary>
/// The outbox of coordinators on PostgreSQL: one <c>alerts</c> table in the store's schema, shared
/// by every instance on the database. An alert's id is unique there, so the instances that notice
/// the same stuck episode record it once; a claim (owner and expiry, by the database's clock) lets
/// one instance deliver it while the others skip it, and expires if that instance dies, so another
/// delivers it then (at least once, with the alert id as the Idempotency-Key).
/// </summary>
internal sealed class PostgresAlertOutbox : IAlertOutbox
{
    // A claim covers one round of deliveries: at most ClaimBatch alerts, each within the webhook's
    // timeout (10 s), so a live instance never loses a claim it is still working on.
    internal const int ClaimBatch = 10;
    private static readonly TimeSpan ClaimFor = TimeSpan.FromMinutes(2);

    private const string Columns = "seq, id, gid, kind, episode, body, attempts, delivered_at, last_error";

    private readonly NpgsqlDataSource _data;
    private readonly string _table;
    private readonly string _owner;

    private PostgresAlertOutbox(NpgsqlDataSource data, string table, string owner)
    {
        _data = data;
        _table = table;
        _owner = owner;
    }

    /// <summary>Opens the outbox in <paramref name="schema"/> (which the store created), creating its table if missing.</summary>
    public static async Task<PostgresAlertOutbox> OpenAsync(string connectionString, string schema, CancellationToken cancellationToken)
    {
        var table = $"\"{schema}\".alerts";
        var data = NpgsqlDataSource.Create(connectionString);
        try
        {
            await using var connection = await data.OpenConnectionAsync(cancellationToken);
            await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
            // Instances starting together: the lock makes the second wait, then find the table.
            await using (var command = new NpgsqlCommand("SELECT pg_advisory_xact_lock(hashtext('treaty.alerts'), hashtext(@schema));", connection, transaction))
            {
                command.Parameters.Add(new NpgsqlParameter<string>("schema", schema));
                await command.ExecuteNonQueryAsync(cancellationToken);
            }

            await using (var command = new NpgsqlCommand(
                $"""
                CREATE TABLE IF NOT EXISTS {table} (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    gid text NOT NULL,
                    kind text NOT NULL,
                    episode integer NOT NULL,
                    body text NOT NULL,
                    created_at bigint NOT NULL,
                    attempts integer NOT NULL DEFAULT 0,
                    next_at bigint NOT NULL,
                    delivered_at bigint NULL,
                    last_error text NULL,
                    claimed_by text NULL,
                    claimed_until timestamptz NULL
                );
                CREATE INDEX IF NOT EXISTS alerts_by_gid ON {table} (gid, kind, episode);
                CREATE INDEX IF NOT EXISTS alerts_undelivered ON {table} (gid, seq) WHERE delivered_at IS NULL;
                """, connection, transaction))
            {
                await command.ExecuteNonQueryAsync(cancellationToken);
            }

            await transaction.CommitAsync(cancellationToken);
            return new PostgresAlertOutbox(data, table, $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}");
        }
        catch
        {
            await data.DisposeAsync();
            throw;
        }
    }

    public async Task<AlertLedger> LedgerAsync(string gid, CancellationToken cancellationToken)
    {
        await using var command = _data.CreateCommand(
            $"""
            SELECT s.episode, EXISTS (SELECT 1 FROM {_table} r WHERE r.gid = s.gid AND r.kind = 'resolved' AND r.episode = s.episode)
            FROM {_table} s WHERE s.gid = @gid AND s.kind = 'stuck' ORDER BY s.episode DESC LIMIT 1
            """);
        command.Parameters.Add(new NpgsqlParameter<string>("gid", gid));
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken)
            ? new AlertLedger(reader.GetInt32(0), reader.GetBoolean(1))
            : AlertLedger.None;
    }

    public async Task<bool> AddAsync(string id, string gid, string kind, int episode, string body, DateTimeOffset now, CancellationToken cancellationToken)
    {
        await using var command = _data.CreateCommand(
            $"""
            INSERT INTO {_table} (id, gid, kind, episode, body, created_at, next_at) VALUES (@id, @gid, @kind, @episode, @body, @now, @now)
            ON CONFLICT (id) DO NOTHING
            """);
        command.Parameters.Add(new NpgsqlParameter<string>("id", id));
        command.Parameters.Add(new NpgsqlParameter<string>("gid", gid));
        command.Parameters.Add(new NpgsqlParameter<string>("kind", kind));
        command.Parameters.Add(new NpgsqlParameter<int>("episode", episode));
        command.Parameters.Add(new NpgsqlParameter<string>("body", body));
        command.Parameters.Add(new NpgsqlParameter<long>("now", now.ToUnixTimeMilliseconds()));
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task<IReadOnlyList<string>> OpenEpisodesAsync(CancellationToken cancellationToken)
    {
        await using var command = _data.CreateCommand(
            $"""
            SELECT DISTINCT s.gid FROM {_table} s WHERE s.kind = 'stuck'
            AND NOT EXISTS (SELECT 1 FROM {_table} r WHERE r.gid = s.gid AND r.kind = 'resolved' AND r.episode = s.episode)
            """);
        var gids = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            gids.Add(reader.GetString(0));
        }

        return gids;
    }

    public async Task<IReadOnlyList<AlertRow>> ClaimDueAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken)
    {
        // SKIP LOCKED: two instances claiming at once take different rows instead of waiting.
        await using var command = _data.CreateCommand(
            $"""
            UPDATE {_table} SET claimed_by = @owner, claimed_until = clock_timestamp() + @claim
            WHERE seq IN (
                SELECT a.seq FROM {_table} a
                WHERE a.delivered_at IS NULL AND a.next_at <= @now
                AND (a.claimed_until IS NULL OR a.claimed_until <= clock_timestamp())
                AND NOT EXISTS (SELECT 1 FROM {_table} b WHERE b.gid = a.gid AND b.seq < a.seq AND b.delivered_at IS NULL)
                ORDER BY a.seq LIMIT @limit
                FOR UPDATE SKIP LOCKED)
            RETURNING {Columns}
            """);
        command.Parameters.Add(new NpgsqlParameter<string>("owner", _owner));
        command.Parameters.Add(new NpgsqlParameter<TimeSpan>("claim", ClaimFor) { NpgsqlDbType = NpgsqlDbType.Interval });
        command.Parameters.Add(new NpgsqlParameter<long>("now", now.ToUnixTimeMilliseconds()));
        command.Parameters.Add(new NpgsqlParameter<int>("limit", Math.Min(limit, ClaimBatch)));
        var rows = await AlertRow.ReadAllAsync(command, cancellationToken);
        rows.Sort((x, y) => x.Seq.CompareTo(y.Seq));
        return rows;
    }

    public async Task<IReadOnlyList<AlertRow>> AllAsync(CancellationToken cancellationToken)
    {
        await using var command = _data.CreateCommand($"SELECT {Columns} FROM {_table} ORDER BY seq");
        return await AlertRow.ReadAllAsync(command, cancellationToken);
    }

    public async Task<DateTimeOffset?> NextDueAsync(CancellationToken cancellationToken)
    {
        // The first undelivered alert of each transaction (the ones behind it wait for it); one that
        // another instance is delivering counts from when its claim expires.
        await using var command = _data.CreateCommand(
            $"""
            SELECT MIN(CASE WHEN a.claimed_until > clock_timestamp()
                            THEN GREATEST(a.next_at, (extract(epoch FROM a.claimed_until) * 1000)::bigint)
                            ELSE a.next_at END)
            FROM {_table} a WHERE a.delivered_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM {_table} b WHERE b.gid = a.gid AND b.seq < a.seq AND b.delivered_at IS NULL)
            """);
        var value = await command.ExecuteScalarAsync(cancellationToken);
        return value is long ms ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;
    }

    public async Task MarkDeliveredAsync(long seq, int attempts, DateTimeOffset now, CancellationToken cancellationToken)
    {
        // Delivered is delivered, whoever holds the claim now.
        await using var command = _data.CreateCommand(
            $"""
            UPDATE {_table} SET delivered_at = @now, attempts = GREATEST(attempts, @attempts), last_error = NULL, claimed_by = NULL, claimed_until = NULL
            WHERE seq = @seq AND delivered_at IS NULL
            """);
        command.Parameters.Add(new NpgsqlParameter<long>("now", now.ToUnixTimeMilliseconds()));
        command.Parameters.Add(new NpgsqlParameter<int>("attempts", attempts));
        command.Parameters.Add(new NpgsqlParameter<long>("seq", seq));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public async Task MarkFailedAsync(long seq, int attempts, DateTimeOffset nextAt, string error, CancellationToken cancellationToken)
    {
        // Only under our own claim: an instance that lost it (paused past its expiry) leaves the
        // row to the one that holds it now. The claim ends: whoever is free at next_at retries.
        await using var command = _data.CreateCommand(
            $"""
            UPDATE {_table} SET attempts = @attempts, next_at = @next, last_error = @error, claimed_by = NULL, claimed_until = NULL
            WHERE seq = @seq AND delivered_at IS NULL AND claimed_by = @owner
            """);
        command.Parameters.Add(new NpgsqlParameter<int>("attempts", attempts));
        command.Parameters.Add(new NpgsqlParameter<long>("next", nextAt.ToUnixTimeMilliseconds()));
        command.Parameters.Add(new NpgsqlParameter<string>("error", error.Length > 500 ? error[..500] : error));
        command.Parameters.Add(new NpgsqlParameter<long>("seq", seq));
        command.Parameters.Add(new NpgsqlParameter<string>("owner", _owner));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public ValueTask DisposeAsync() => _data.DisposeAsync();
}
