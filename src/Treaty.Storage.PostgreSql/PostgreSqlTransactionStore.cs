using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Npgsql;
using NpgsqlTypes;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Serialization;

namespace Treaty.Storage.PostgreSql;

/// <summary>
/// The transaction store on PostgreSQL. Several coordinator instances may share one database (and
/// schema): each write is one statement (the row and its journal together), leases are granted and
/// checked by the database's clock, and due work is claimed with <c>FOR UPDATE SKIP LOCKED</c> so
/// that two instances never drive one transaction. Finished transactions are announced to the other
/// instances with LISTEN/NOTIFY, batched off the write path.
/// </summary>
public sealed class PostgreSqlTransactionStore : ITransactionStore, IAsyncDisposable
{
    private static readonly TimeSpan ListenerProbeInterval = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan MaxReconnectDelay = TimeSpan.FromSeconds(5);

    private readonly NpgsqlDataSource _data;
    private readonly NpgsqlDataSource _listen;
    private readonly WriteBatcher _writes;
    private readonly Sql _sql;
    private readonly ILogger _logger;
    private readonly TimeProvider _clock;
    private readonly FinishWaiters _finished = new();
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly Channel<string> _toNotify = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
    // Completes at the first LISTEN; every later one is a reconnect.
    private readonly TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly string? _host;
    private readonly int _port;
    private readonly string? _database;
    private Task? _listener;
    private Task? _notifier;
    private volatile bool _initialized;
    private volatile bool _disposed;

    /// <summary>Creates the store; nothing is opened until <see cref="InitializeAsync"/> (or the first call).</summary>
    /// <exception cref="ArgumentException">The options are not usable.</exception>
    public PostgreSqlTransactionStore(PostgreSqlStoreOptions options, ILogger<PostgreSqlTransactionStore> logger)
        : this(options, logger, TimeProvider.System)
    {
    }

    /// <summary>Creates the store with the clock its background reconnects wait by (leases expire by the database's clock).</summary>
    /// <exception cref="ArgumentException">The options are not usable.</exception>
    public PostgreSqlTransactionStore(PostgreSqlStoreOptions options, ILogger<PostgreSqlTransactionStore> logger, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        ArgumentNullException.ThrowIfNull(clock);
        var problems = options.Validate();
        if (problems.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", problems), nameof(options));
        }

        var builder = new NpgsqlConnectionStringBuilder(options.ConnectionString);
        if (!Names(options.ConnectionString!, "Max Auto Prepare", "MaxAutoPrepare"))
        {
            // Every statement of the store is one of a handful, run over and over: prepared once per
            // connection, PostgreSQL skips parsing and planning them (measured in the bench, 2 cores:
            // about +15-50% sagas/s). A connection string that sets it wins.
            builder.MaxAutoPrepare = PostgreSqlStoreDefaults.MaxAutoPrepare;
        }

        if (!Names(options.ConnectionString!, "No Reset On Close", "NoResetOnClose"))
        {
            // A pooled connection is otherwise reset each time it goes back to the pool: with
            // prepared statements to keep, Npgsql sends seven statements for it (RESET ALL, UNLISTEN *,
            // DISCARD TEMP, ...) ahead of the connection's next use, about one set per saga under
            // load. The store leaves no session state behind (its advisory lock is the transaction's,
            // and the one LISTEN has a connection of its own, never pooled). A connection string
            // that sets it wins.
            builder.NoResetOnClose = true;
        }

        _host = builder.Host;
        _port = builder.Port;
        _database = builder.Database;
        _data = NpgsqlDataSource.Create(builder);
        // LISTEN is session state: the listener's connection is closed with its session, never
        // handed back to the pool still listening.
        _listen = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(builder.ConnectionString) { Pooling = false });
        _writes = new WriteBatcher(_data);
        _sql = new Sql(options.Schema);
        _logger = logger;
        _clock = clock;
    }

    /// <summary>The schema holding the tables.</summary>
    public string Schema => _sql.Schema;

    /// <summary>
    /// Creates the schema and tables if missing and migrates them, under an advisory lock so that
    /// instances starting together migrate once. Safe to call more than once; the other methods
    /// call it on first use.
    /// </summary>
    public async Task InitializeAsync(CancellationToken cancellationToken)
    {
        if (_initialized)
        {
            return;
        }

        await _lifecycle.WaitAsync(cancellationToken);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_initialized)
            {
                return;
            }

            var version = await MigrateAsync(cancellationToken);
            _writes.Start();
            _notifier ??= Task.Run(() => NotifyLoopAsync(_stop.Token), CancellationToken.None);
            // Listening before the store is usable: a waiter registered afterwards cannot miss a
            // notification sent by another instance.
            _listener ??= Task.Run(() => ListenLoopAsync(_stop.Token), CancellationToken.None);
            await _listening.Task.WaitAsync(cancellationToken);
            _initialized = true;
            Log.Opened(_logger, _host, _port, _database, _sql.Schema, version);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    private async Task<int> MigrateAsync(CancellationToken cancellationToken)
    {
        await using var connection = await _data.OpenConnectionAsync(cancellationToken);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
        // DDL is transactional in PostgreSQL: the version and the tables commit together, and the
        // lock (released at commit) makes a second instance wait, then find the work done.
        await using (var command = new NpgsqlCommand("SELECT pg_advisory_xact_lock(@class, hashtext(@schema));", connection, transaction))
        {
            command.Parameters.Add(new NpgsqlParameter<int>("class", Sql.MigrationLockClass));
            command.Parameters.Add(new NpgsqlParameter<string>("schema", _sql.Schema));
            await command.ExecuteNonQueryAsync(cancellationToken);
        }

        await using (var command = new NpgsqlCommand(
            $"""
            CREATE SCHEMA IF NOT EXISTS "{_sql.Schema}";
            CREATE TABLE IF NOT EXISTS {_sql.Version} (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL);
            INSERT INTO {_sql.Version} (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
            """, connection, transaction))
        {
            await command.ExecuteNonQueryAsync(cancellationToken);
        }

        int version;
        await using (var command = new NpgsqlCommand($"SELECT version FROM {_sql.Version} WHERE id = 1;", connection, transaction))
        {
            version = Convert.ToInt32(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
        }

        if (version > _sql.Migrations.Count)
        {
            throw new InvalidOperationException(
                $"The database has schema version {version}, newer than the {_sql.Migrations.Count} this build of Treaty understands; upgrade Treaty.");
        }

        var applied = new List<int>();
        for (; version < _sql.Migrations.Count; version++)
        {
            await using var migrate = new NpgsqlCommand(_sql.Migrations[version], connection, transaction);
            await migrate.ExecuteNonQueryAsync(cancellationToken);
            applied.Add(version + 1);
        }

        if (applied.Count > 0)
        {
            await using var command = new NpgsqlCommand($"UPDATE {_sql.Version} SET version = @version WHERE id = 1;", connection, transaction);
            command.Parameters.Add(new NpgsqlParameter<int>("version", version));
            await command.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        foreach (var v in applied)
        {
            Log.Migrated(_logger, _sql.Schema, v);
        }

        return version;
    }

    /// <inheritdoc />
    public Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        InsertAsync(state, journal, lease: null, cancellationToken);

    /// <inheritdoc />
    public async Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(journal);
        await EnsureInitializedAsync(cancellationToken);
        var row = StoredRow.ForInsert(state);
        var owned = lease is not null && !row.Terminal;
        while (true)
        {
            var inserted = await _writes.WriteAsync(_sql.Insert, p =>
            {
                AddRow(p, row);
                Add(p, "spec_json", NpgsqlDbType.Bytea, row.SpecJson);
                Add(p, "owner", NpgsqlDbType.Text, owned ? lease!.Owner : null);
                Add(p, "epoch", NpgsqlDbType.Bigint, lease is null ? 0L : 1L);
                Add(p, "lease", NpgsqlDbType.Interval, owned ? lease!.Duration : TimeSpan.Zero);
                AddJournal(p, journal);
            }, cancellationToken) == 1;
            if (inserted)
            {
                if (row.Terminal)
                {
                    Finished(row.Gid);
                }

                return null;
            }

            // Only the conflict path pays for the second look. A purge between the two statements
            // leaves nothing to read: the insert is tried again.
            if (await ReadStateAsync(row.Gid, cancellationToken) is { } existing)
            {
                return existing;
            }
        }
    }

    /// <inheritdoc />
    public Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        UpdateAsync(state, journal, fence: null, cancellationToken);

    /// <inheritdoc />
    public async Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(journal);
        await EnsureInitializedAsync(cancellationToken);
        var row = StoredRow.From(state);
        var expected = row.Version - 1;
        var updated = await _writes.WriteAsync(_sql.Update, p =>
        {
            AddRow(p, row);
            Add(p, "expected_version", NpgsqlDbType.Bigint, expected);
            Add(p, "terminal", NpgsqlDbType.Boolean, row.Terminal);
            Add(p, "fence_owner", NpgsqlDbType.Text, fence?.Owner);
            Add(p, "fence_epoch", NpgsqlDbType.Bigint, fence?.Epoch ?? 0L);
            AddJournal(p, journal);
        }, cancellationToken) == 1;
        if (updated)
        {
            if (row.Terminal)
            {
                Finished(row.Gid);
            }

            return;
        }

        // Nothing was written; a second look says which conflict it was: the fence first, so a stale
        // owner hears that it lost the transaction even after the new owner wrote.
        await using var look = _data.CreateCommand(_sql.SelectFence);
        Add(look, "gid", NpgsqlDbType.Text, row.Gid);
        await using var reader = await look.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            throw new ConcurrencyConflictException($"Transaction '{row.Gid}' does not exist.");
        }

        var version = reader.GetInt64(0);
        var owner = reader.IsDBNull(1) ? null : reader.GetString(1);
        var epoch = reader.GetInt64(2);
        if (!Fence.Admits(fence, owner, epoch))
        {
            throw new LeaseLostException(
                $"Transaction '{row.Gid}' is held by {owner ?? "nobody"} at epoch {epoch}; the write was fenced by {fence?.Owner ?? "nobody"} at epoch {fence?.Epoch ?? 0}.");
        }

        throw new ConcurrencyConflictException($"Transaction '{row.Gid}' is at version {version}; the update expected {expected}.");
    }

    /// <inheritdoc />
    /// <remarks>One statement; leases expire by the database's clock.</remarks>
    public async Task<IReadOnlyList<LeaseClaim>> ClaimDueAsync(LeaseRequest lease, DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.ClaimDue);
        Add(command, "owner", NpgsqlDbType.Text, lease.Owner);
        Add(command, "lease", NpgsqlDbType.Interval, lease.Duration);
        Add(command, "due_by", NpgsqlDbType.Bigint, StoredValues.Time(dueBy));
        Add(command, "limit", NpgsqlDbType.Integer, limit);
        var claims = new List<LeaseClaim>();
        var started = Stopwatch.GetTimestamp();
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                claims.Add(new LeaseClaim(reader.GetString(0), reader.GetInt64(1)));
            }
        }

        Committed(started);
        return claims;
    }

    /// <inheritdoc />
    public async Task<LeaseClaim?> ClaimAsync(string gid, LeaseRequest lease, bool takeOver, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        ArgumentNullException.ThrowIfNull(lease);
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.ClaimOne);
        Add(command, "owner", NpgsqlDbType.Text, lease.Owner);
        Add(command, "lease", NpgsqlDbType.Interval, lease.Duration);
        Add(command, "gid", NpgsqlDbType.Text, gid);
        Add(command, "take_over", NpgsqlDbType.Boolean, takeOver);
        var started = Stopwatch.GetTimestamp();
        var claimed = await command.ExecuteScalarAsync(cancellationToken);
        Committed(started);
        return claimed is long epoch ? new LeaseClaim(gid, epoch) : null;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<string>> RenewAsync(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(held);
        if (held.Count == 0)
        {
            return [];
        }

        await EnsureInitializedAsync(cancellationToken);
        var gids = held.Select(c => c.Gid).Distinct(StringComparer.Ordinal).ToList();
        // In the write queue (see Sql.Renew: a renew beside the instance's own batch deadlocked).
        var renewed = await _writes.WriteAsync(_sql.Renew, p =>
        {
            AddHeld(p, lease.Owner, held);
            Add(p, "lease", NpgsqlDbType.Interval, lease.Duration);
        }, cancellationToken);
        if (renewed == gids.Count)
        {
            return [];
        }

        var still = new HashSet<string>(StringComparer.Ordinal);
        await using var command = _data.CreateCommand(_sql.SelectHeld);
        AddHeld(command.Parameters, lease.Owner, held);
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                still.Add(reader.GetString(0));
            }
        }

        return [.. gids.Where(gid => !still.Contains(gid))];
    }

    /// <inheritdoc />
    public async Task ReleaseAsync(string owner, IReadOnlyCollection<LeaseClaim> held, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(owner);
        ArgumentNullException.ThrowIfNull(held);
        if (held.Count == 0)
        {
            return;
        }

        await EnsureInitializedAsync(cancellationToken);
        // In the write queue, as a renew is (see Sql.Renew).
        await _writes.WriteAsync(_sql.Release, p => AddHeld(p, owner, held), cancellationToken);
    }

    /// <inheritdoc />
    /// <remarks>
    /// This instance's own terminal writes wake their waiters at once; other instances' arrive by
    /// NOTIFY on the store's listening connection (opened by <see cref="InitializeAsync"/>). When
    /// that connection is lost, every waiter is woken once it listens again (a spurious wake is
    /// harmless: the caller reads the state again), so no finish is missed while nobody listened.
    /// </remarks>
    public Task WhenFinishedAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        return _finished.WaitAsync(gid, cancellationToken);
    }

    /// <inheritdoc />
    public async Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        await EnsureInitializedAsync(cancellationToken);
        return await ReadStateAsync(gid, cancellationToken);
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<JournalRecord>> GetJournalAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.SelectJournal);
        Add(command, "gid", NpgsqlDbType.Text, gid);
        var records = new List<JournalRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            records.Add(StoredValues.JournalRecord(reader, gid));
        }

        return records;
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The cursor is not one this store issued.</exception>
    public async Task<TransactionPage> ListAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        var limit = Math.Clamp(query.Limit, 1, PostgreSqlStoreDefaults.MaxListLimit);
        ListCursor? after = query.Cursor is { } cursor ? ListCursor.Decode(cursor) : null;
        await EnsureInitializedAsync(cancellationToken);

        await using var command = _data.CreateCommand();
        // Assembled from constant fragments only (so each filter can use its index); every value is a parameter.
        var sql = new StringBuilder(_sql.ListFrom);
        if (query.Status is { } status)
        {
            sql.Append(" AND status = @status");
            Add(command, "status", NpgsqlDbType.Text, StoredValues.Status(status));
        }

        AppendFilters(sql, command, query);
        if (after is { } position)
        {
            sql.Append(" AND (created_at, gid) < (@after_created_at, @after_gid)");
            Add(command, "after_created_at", NpgsqlDbType.Bigint, position.CreatedAt);
            Add(command, "after_gid", NpgsqlDbType.Text, position.Gid);
        }

        // One more than the page: its presence is what says another page exists.
        sql.Append(" ORDER BY created_at DESC, gid DESC LIMIT @take;");
        Add(command, "take", NpgsqlDbType.Integer, limit + 1);
        command.CommandText = sql.ToString();

        var items = new List<TransactionState>(limit);
        ListCursor last = default;
        var more = false;
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                if (items.Count == limit)
                {
                    more = true;
                    break;
                }

                last = new ListCursor(reader.GetInt64(0), reader.GetString(1));
                items.Add(StoredStateCodec.Read(reader.GetFieldValue<byte[]>(2), reader.GetFieldValue<byte[]>(3)));
            }
        }

        return new TransactionPage(items, more ? last.Encode() : null);
    }

    /// <inheritdoc />
    public async Task<TransactionCounts> CountAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        await EnsureInitializedAsync(cancellationToken);
        var byStatus = Enum.GetValues<TransactionStatus>().ToDictionary(status => status, _ => 0L);
        await using (var command = _data.CreateCommand())
        {
            var sql = new StringBuilder(_sql.CountFrom);
            AppendFilters(sql, command, query);
            command.CommandText = sql.Append(" GROUP BY status;").ToString();
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                if (StoredValues.TryParseStatus(reader.GetString(0), out var status))
                {
                    byStatus[status] = reader.GetInt64(1);
                }
            }
        }

        if (query.Stuck == false)
        {
            return new TransactionCounts(byStatus, 0);
        }

        await using (var command = _data.CreateCommand())
        {
            var sql = new StringBuilder(_sql.CountStuckFrom);
            AppendFilters(sql, command, query with { Stuck = true });
            command.CommandText = sql.Append(';').ToString();
            var stuck = Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
            return new TransactionCounts(byStatus, stuck);
        }
    }

    /// <inheritdoc />
    /// <remarks>Reads the unfinished rows only (the due index's rows); expiry by the database's clock.</remarks>
    public async Task<IReadOnlyList<LeaseHolder>> ListHoldersAsync(CancellationToken cancellationToken)
    {
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.ListHolders);
        var holders = new List<LeaseHolder>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            holders.Add(new LeaseHolder(reader.GetString(0), reader.GetInt64(1), reader.GetFieldValue<DateTimeOffset>(2), reader.GetBoolean(3)));
        }

        return holders;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<string>> ListDueAsync(DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.ListDue);
        Add(command, "due_by", NpgsqlDbType.Bigint, StoredValues.Time(dueBy));
        Add(command, "limit", NpgsqlDbType.Integer, limit);
        var gids = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            gids.Add(reader.GetString(0));
        }

        return gids;
    }

    /// <inheritdoc />
    public async Task<int> PurgeFinishedAsync(DateTimeOffset finishedBefore, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        await EnsureInitializedAsync(cancellationToken);
        await using var command = _data.CreateCommand(_sql.Purge);
        Add(command, "before", NpgsqlDbType.Bigint, StoredValues.Time(finishedBefore));
        Add(command, "limit", NpgsqlDbType.Integer, batchSize);
        var started = Stopwatch.GetTimestamp();
        var purged = Convert.ToInt32(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
        Committed(started);
        return purged;
    }

    /// <summary>
    /// One write is one autocommitted statement (one round trip, the server's commit included): a
    /// batch of 1 in <c>treaty.store.batch.size</c>, its round trip in <c>treaty.store.commit.duration</c>,
    /// as the SQLite store records its group commits. A write that found a conflict and changed
    /// nothing still committed its statement, and counts, as in SQLite; a statement that threw does not.
    /// </summary>
    private static void Committed(long startedTimestamp) => StoreMetrics.Committed(StoreMetrics.PostgreSql, 1, startedTimestamp);

    /// <summary>Stops listening, sends the notifications still queued, and closes every connection.</summary>
    public async ValueTask DisposeAsync()
    {
        await _lifecycle.WaitAsync(CancellationToken.None);
        try
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            // Queued writes are sent first: their callers wait for them, and their finishes are
            // owed to the notifier's last batch.
            await _writes.StopAsync();
            _toNotify.Writer.TryComplete();
            if (_notifier is not null)
            {
                // The queue drains first (other instances' waiters are owed these); a dead database
                // cannot hold the shutdown longer than the bound.
                await Task.WhenAny(_notifier, Task.Delay(TimeSpan.FromSeconds(5), _clock, CancellationToken.None));
            }

            await _stop.CancelAsync();
            foreach (var task in new[] { _notifier, _listener })
            {
                if (task is not null)
                {
                    await task.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                }
            }

            await _data.DisposeAsync();
            await _listen.DisposeAsync();
            _stop.Dispose();
            if (_initialized)
            {
                Log.Closed(_logger, _host, _port, _database);
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>The settings the store's connections use (tests).</summary>
    internal NpgsqlConnectionStringBuilder EffectiveSettings => new(_data.ConnectionString);

    /// <summary>The settings of the listener's own connection (tests).</summary>
    internal NpgsqlConnectionStringBuilder ListenerSettings => new(_listen.ConnectionString);

    /// <summary>The group commit (tests: hold it, count its batches).</summary>
    internal WriteBatcher Writes => _writes;

    /// <summary>The waiters' bookkeeping (tests).</summary>
    internal int Waiting => _finished.Count;


    /// <summary>A terminal write committed: local waiters now, other instances by a batched NOTIFY.</summary>
    private void Finished(string gid)
    {
        _finished.Signal(gid);
        // Not NOTIFY inside the write's own transaction: PostgreSQL takes one database-wide lock
        // from a notifying transaction's pre-commit to its commit, so every terminal write would
        // queue behind every other's commit (and fsync). A background sender coalesces the gids
        // and notifies in batches, one short statement each, off the hot path.
        _toNotify.Writer.TryWrite(gid);
    }

    private async Task NotifyLoopAsync(CancellationToken stop)
    {
        var reader = _toNotify.Reader;
        var batch = new List<string>();
        var payload = new StringBuilder();
        try
        {
            while (await reader.WaitToReadAsync(stop))
            {
                var bytes = 0;
                while (reader.TryRead(out var gid))
                {
                    var size = Encoding.UTF8.GetByteCount(gid) + 1;
                    if (bytes + size > PostgreSqlStoreDefaults.MaxNotifyPayloadBytes && batch.Count > 0)
                    {
                        await SendAsync(batch, payload, stop);
                        bytes = 0;
                    }

                    batch.Add(gid);
                    bytes += size;
                }

                if (batch.Count > 0)
                {
                    await SendAsync(batch, payload, stop);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task SendAsync(List<string> batch, StringBuilder payload, CancellationToken stop)
    {
        payload.Clear().AppendJoin('\n', batch);
        var text = payload.ToString();
        var count = batch.Count;
        batch.Clear();
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var command = _data.CreateCommand("SELECT pg_notify(@channel, @payload);");
                Add(command, "channel", NpgsqlDbType.Text, _sql.Channel);
                Add(command, "payload", NpgsqlDbType.Text, text);
                await command.ExecuteNonQueryAsync(stop);
                return;
            }
            catch (Exception e) when (e is NpgsqlException or TimeoutException or IOException && !stop.IsCancellationRequested)
            {
                Log.NotifyFailed(_logger, e, count, attempt);
                if (attempt == 3)
                {
                    // Dropped: the listeners of the other instances lost their connection too when
                    // the database went away, and wake every waiter when they reconnect.
                    return;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(100 * attempt), _clock, stop);
            }
        }
    }

    private async Task ListenLoopAsync(CancellationToken stop)
    {
        var delay = TimeSpan.FromMilliseconds(100);
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await using var connection = await _listen.OpenConnectionAsync(stop);
                connection.Notification += OnNotification;
                await using (var listen = new NpgsqlCommand($"LISTEN \"{_sql.Channel}\";", connection))
                {
                    await listen.ExecuteNonQueryAsync(stop);
                }

                Log.Listening(_logger, _sql.Channel);
                if (!_listening.TrySetResult())
                {
                    // A reconnect: anything may have finished while nobody listened, so every
                    // waiter reads its state again.
                    _finished.SignalAll();
                }
                delay = TimeSpan.FromMilliseconds(100);
                while (true)
                {
                    if (!await connection.WaitAsync(ListenerProbeInterval, stop))
                    {
                        // Quiet for a while: a round trip proves the connection is still alive
                        // (a half-open socket would otherwise wait forever).
                        await using var probe = new NpgsqlCommand("SELECT 1;", connection);
                        await probe.ExecuteNonQueryAsync(stop);
                    }
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (!stop.IsCancellationRequested)
            {
                Log.ListenerLost(_logger, e, delay);
                try
                {
                    await Task.Delay(delay, _clock, stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxReconnectDelay.Ticks));
            }
        }
    }

    private void OnNotification(object sender, NpgsqlNotificationEventArgs e)
    {
        foreach (var gid in e.Payload.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            _finished.Signal(gid);
        }
    }

    private async Task<TransactionState?> ReadStateAsync(string gid, CancellationToken cancellationToken)
    {
        await using var command = _data.CreateCommand(_sql.SelectState);
        Add(command, "gid", NpgsqlDbType.Text, gid);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken)
            ? StoredStateCodec.Read(reader.GetFieldValue<byte[]>(0), reader.GetFieldValue<byte[]>(1))
            : null;
    }

    private async ValueTask EnsureInitializedAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_initialized)
        {
            await InitializeAsync(cancellationToken);
        }
    }

    /// <summary>The filters shared by the listing and the counts (all but status and paging).</summary>
    private static void AppendFilters(StringBuilder sql, NpgsqlCommand command, TransactionQuery query)
    {
        if (query.Protocol is { } protocol)
        {
            sql.Append(" AND protocol = @protocol");
            Add(command, "protocol", NpgsqlDbType.Text, StoredValues.Protocol(protocol));
        }

        if (query.Stuck is { } stuck)
        {
            // A literal, not a parameter: the stuck-only partial index applies only to "WHERE stuck".
            sql.Append(stuck ? " AND stuck" : " AND NOT stuck");
        }

        if (query.Since is { } since)
        {
            sql.Append(" AND created_at >= @since");
            Add(command, "since", NpgsqlDbType.Bigint, StoredValues.Time(since));
        }

        if (query.Until is { } until)
        {
            sql.Append(" AND created_at < @until");
            Add(command, "until", NpgsqlDbType.Bigint, StoredValues.Time(until));
        }

        if (!string.IsNullOrEmpty(query.GidContains))
        {
            // strpos, not LIKE: no wildcard in the text can widen the match, and it is case-sensitive like gids.
            sql.Append(" AND strpos(gid, @gid_contains) > 0");
            Add(command, "gid_contains", NpgsqlDbType.Text, query.GidContains);
        }
    }

    private static void AddRow(NpgsqlParameterCollection command, StoredRow row)
    {
        Add(command, "gid", NpgsqlDbType.Text, row.Gid);
        Add(command, "protocol", NpgsqlDbType.Text, row.Protocol);
        Add(command, "status", NpgsqlDbType.Text, row.Status);
        Add(command, "stuck", NpgsqlDbType.Boolean, row.Stuck);
        Add(command, "created_at", NpgsqlDbType.Bigint, row.CreatedAt);
        Add(command, "updated_at", NpgsqlDbType.Bigint, row.UpdatedAt);
        Add(command, "next_wake_at", NpgsqlDbType.Bigint, row.NextWakeAt);
        Add(command, "fingerprint", NpgsqlDbType.Text, row.Fingerprint);
        Add(command, "version", NpgsqlDbType.Bigint, row.Version);
        Add(command, "state_json", NpgsqlDbType.Bytea, row.StateJson);
    }

    private static void AddJournal(NpgsqlParameterCollection command, IReadOnlyList<JournalEntry> journal)
    {
        var n = journal.Count;
        var at = new long[n];
        var kind = new string[n];
        var branch = new string?[n];
        var op = new string?[n];
        var attempt = new int?[n];
        var statusCode = new int?[n];
        var detail = new string?[n];
        var durationMs = new long?[n];
        var body = new string?[n];
        for (var i = 0; i < n; i++)
        {
            var e = journal[i];
            at[i] = StoredValues.Time(e.At);
            kind[i] = e.Kind;
            branch[i] = e.Branch;
            op[i] = e.Op;
            attempt[i] = e.Attempt;
            statusCode[i] = e.StatusCode;
            detail[i] = Text(e.Detail);
            durationMs[i] = e.DurationMs;
            body[i] = Text(e.Body);
        }

        Add(command, "j_at", NpgsqlDbType.Array | NpgsqlDbType.Bigint, at);
        Add(command, "j_kind", NpgsqlDbType.Array | NpgsqlDbType.Text, kind);
        Add(command, "j_branch", NpgsqlDbType.Array | NpgsqlDbType.Text, branch);
        Add(command, "j_op", NpgsqlDbType.Array | NpgsqlDbType.Text, op);
        Add(command, "j_attempt", NpgsqlDbType.Array | NpgsqlDbType.Integer, attempt);
        Add(command, "j_status_code", NpgsqlDbType.Array | NpgsqlDbType.Integer, statusCode);
        Add(command, "j_detail", NpgsqlDbType.Array | NpgsqlDbType.Text, detail);
        Add(command, "j_duration_ms", NpgsqlDbType.Array | NpgsqlDbType.Bigint, durationMs);
        Add(command, "j_body", NpgsqlDbType.Array | NpgsqlDbType.Text, body);
    }

    private static void AddHeld(NpgsqlParameterCollection command, string owner, IReadOnlyCollection<LeaseClaim> held)
    {
        Add(command, "owner", NpgsqlDbType.Text, owner);
        Add(command, "gids", NpgsqlDbType.Array | NpgsqlDbType.Text, held.Select(c => c.Gid).ToArray());
        Add(command, "epochs", NpgsqlDbType.Array | NpgsqlDbType.Bigint, held.Select(c => c.Epoch).ToArray());
    }

    /// <summary>PostgreSQL text cannot hold NUL; a participant's answer (journal detail or body) may.
    /// It becomes U+FFFD rather than failing the write (the engine would retry it forever).</summary>
    private static string? Text(string? value) =>
        value is not null && value.Contains('\0', StringComparison.Ordinal) ? value.Replace('\0', '\uFFFD') : value;

    /// <summary>True when the connection string sets one of the keywords itself.</summary>
    private static bool Names(string connectionString, params string[] keywords)
    {
        var parsed = new System.Data.Common.DbConnectionStringBuilder { ConnectionString = connectionString };
        return keywords.Any(parsed.ContainsKey);
    }

    private static void Add(NpgsqlCommand command, string name, NpgsqlDbType type, object? value) =>
        Add(command.Parameters, name, type, value);

    private static void Add(NpgsqlParameterCollection parameters, string name, NpgsqlDbType type, object? value) =>
        parameters.Add(new NpgsqlParameter(name, type) { Value = value ?? DBNull.Value });
}
