using System.Globalization;
using System.Text;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// The embedded transaction store: one SQLite file in WAL mode with <c>synchronous=FULL</c>, so a
/// completed write is on disk. Writes are group-committed by one writer thread (many callers, one
/// fsync); reads run in parallel on their own connections. One coordinator process per file.
/// </summary>
public sealed class SqliteTransactionStore : ITransactionStore, IAsyncDisposable
{
    private readonly string _path;
    private readonly int _maxBatchSize;
    private readonly ILogger _logger;
    private readonly TimeProvider _clock;
    private readonly FinishWaiters _finished = new();
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private GroupCommitWriter? _writer;
    private ReaderPool? _readers;
    private volatile bool _initialized;
    private volatile bool _disposed;

    /// <summary>Creates the store; nothing is opened until <see cref="InitializeAsync"/> (or the first call).</summary>
    /// <exception cref="ArgumentException">The options are not usable.</exception>
    public SqliteTransactionStore(SqliteStoreOptions options, ILogger<SqliteTransactionStore> logger)
        : this(options, logger, TimeProvider.System)
    {
    }

    /// <summary>Creates the store with the clock its leases expire by.</summary>
    /// <exception cref="ArgumentException">The options are not usable.</exception>
    public SqliteTransactionStore(SqliteStoreOptions options, ILogger<SqliteTransactionStore> logger, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(clock);
        _clock = clock;
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        var problems = options.Validate();
        if (problems.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", problems), nameof(options));
        }

        _path = System.IO.Path.GetFullPath(options.Path);
        _maxBatchSize = options.MaxBatchSize;
        _logger = logger;
    }

    /// <summary>The full path of the database file.</summary>
    public string Path => _path;

    /// <summary>
    /// Creates the directory and the database if missing, migrates the schema, and starts the writer.
    /// Safe to call more than once; the other methods call it on first use.
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

            if (System.IO.Path.GetDirectoryName(_path) is { Length: > 0 } directory)
            {
                Directory.CreateDirectory(directory);
            }

            var connection = Schema.OpenWriter(_path);
            WriterConnection writer;
            try
            {
                foreach (var version in Schema.Migrate(connection))
                {
                    Log.Migrated(_logger, _path, version);
                }

                writer = new WriterConnection(connection);
                // One coordinator process per file: whoever held leases before this open is gone,
                // so a restart takes its transactions back at once instead of waiting them out.
                writer.ReleaseEveryone();
            }
            catch
            {
                connection.Dispose();
                throw;
            }

            _readers = new ReaderPool(_path);
            _writer = new GroupCommitWriter(writer, _maxBatchSize, _path, _logger);
            _initialized = true;
            Log.Opened(_logger, _path, Schema.CurrentVersion);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <inheritdoc />
    public Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        InsertAsync(state, journal, lease: null, cancellationToken);

    /// <inheritdoc />
    public async Task<TransactionState?> InsertAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, LeaseRequest? lease, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(journal);
        // Serialized here, on the caller's thread, so the writer thread only runs SQL.
        var request = new InsertRequest(StoredRow.ForInsert(state), [.. journal], lease, _clock, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        var existing = await request.Task;
        if (existing is null && state.IsTerminal)
        {
            _finished.Signal(state.Gid);
        }

        return existing;
    }

    /// <inheritdoc />
    public Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, CancellationToken cancellationToken) =>
        UpdateAsync(state, journal, fence: null, cancellationToken);

    /// <inheritdoc />
    public async Task UpdateAsync(TransactionState state, IReadOnlyList<JournalEntry> journal, Fence? fence, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(journal);
        var request = new UpdateRequest(StoredRow.From(state), [.. journal], fence, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        await request.Task;
        if (state.IsTerminal)
        {
            _finished.Signal(state.Gid);
        }
    }

    /// <inheritdoc />
    /// <remarks>Leases expire by this store's clock (the coordinator's: one process per file).</remarks>
    public async Task<IReadOnlyList<LeaseClaim>> ClaimDueAsync(LeaseRequest lease, DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        var request = new ClaimDueRequest(lease, StoredValues.Time(dueBy), limit, _clock, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        return await request.Task;
    }

    /// <inheritdoc />
    public async Task<LeaseClaim?> ClaimAsync(string gid, LeaseRequest lease, bool takeOver, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        ArgumentNullException.ThrowIfNull(lease);
        var request = new ClaimRequest(gid, lease, takeOver, _clock, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        return await request.Task;
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

        var request = new RenewRequest(lease, [.. held], _clock, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        return await request.Task;
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

        var request = new ReleaseRequest(owner, [.. held], cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        await request.Task;
    }

    /// <inheritdoc />
    /// <remarks>One process per file: its own terminal writes are the only ones.</remarks>
    public Task WhenFinishedAsync(string gid, CancellationToken cancellationToken) => _finished.WaitAsync(gid, cancellationToken);

    /// <inheritdoc />
    public async Task<TransactionState?> GetAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        using var lease = await RentReaderAsync(cancellationToken);
        await using var command = lease.Connection.CreateCommand();
        command.CommandText = "SELECT spec_json, state_json FROM transactions WHERE gid = $gid;";
        command.Parameters.AddWithValue("$gid", gid);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? SqliteStoredState.Read(reader, 0, 1) : null;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<JournalRecord>> GetJournalAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        using var lease = await RentReaderAsync(cancellationToken);
        await using var command = lease.Connection.CreateCommand();
        command.CommandText =
            """
            SELECT seq, at, kind, branch, op, attempt, status_code, detail, duration_ms, body
            FROM journal WHERE tx = (SELECT id FROM transactions WHERE gid = $gid) ORDER BY seq;
            """;
        command.Parameters.AddWithValue("$gid", gid);
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
        var limit = Math.Clamp(query.Limit, 1, SqliteStoreDefaults.MaxListLimit);
        ListCursor? after = query.Cursor is { } cursor ? ListCursor.Decode(cursor) : null;

        using var lease = await RentReaderAsync(cancellationToken);
        await using var command = lease.Connection.CreateCommand();
        // The WHERE clause is assembled from constant fragments only (so each filter can use its
        // index); every value is a parameter.
        var sql = new StringBuilder("SELECT created_at, gid, spec_json, state_json FROM transactions WHERE 1 = 1");
        if (query.Status is { } status)
        {
            sql.Append(" AND status = $status");
            command.Parameters.AddWithValue("$status", StoredValues.Status(status));
        }

        AppendFilters(sql, command, query);
        if (after is { } position)
        {
            sql.Append(" AND (created_at, gid) < ($after_created_at, $after_gid)");
            command.Parameters.AddWithValue("$after_created_at", position.CreatedAt);
            command.Parameters.AddWithValue("$after_gid", position.Gid);
        }

        // One more than the page: its presence is what says another page exists.
        sql.Append(" ORDER BY created_at DESC, gid DESC LIMIT $take;");
        command.Parameters.AddWithValue("$take", limit + 1);
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
                items.Add(SqliteStoredState.Read(reader, 2, 3));
            }
        }

        return new TransactionPage(items, more ? last.Encode() : null);
    }

    /// <inheritdoc />
    public async Task<TransactionCounts> CountAsync(TransactionQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        using var lease = await RentReaderAsync(cancellationToken);
        var byStatus = Enum.GetValues<TransactionStatus>().ToDictionary(status => status, _ => 0L);
        // Two queries rather than sum(stuck) in one: the status counts then read only the
        // (status, created_at, gid) index, and the stuck count only the stuck partial index.
        await using (var command = lease.Connection.CreateCommand())
        {
            var sql = new StringBuilder("SELECT status, count(*) FROM transactions WHERE 1 = 1");
            AppendFilters(sql, command, query);
            sql.Append(" GROUP BY status;");
            command.CommandText = sql.ToString();
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                if (StoredValues.TryParseStatus(reader.GetString(0), out var status))
                {
                    byStatus[status] = reader.GetInt64(1);
                }
            }
        }

        await using (var command = lease.Connection.CreateCommand())
        {
            var sql = new StringBuilder("SELECT count(*) FROM transactions WHERE 1 = 1");
            AppendFilters(sql, command, query with { Stuck = true });
            command.CommandText = sql.Append(';').ToString();
            var stuck = query.Stuck == false ? 0L : Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
            return new TransactionCounts(byStatus, stuck);
        }
    }

    /// <inheritdoc />
    /// <remarks>Reads the unfinished rows only (the due index's rows); expiry by the store's clock.</remarks>
    public async Task<IReadOnlyList<LeaseHolder>> ListHoldersAsync(CancellationToken cancellationToken)
    {
        using var lease = await RentReaderAsync(cancellationToken);
        await using var command = lease.Connection.CreateCommand();
        command.CommandText =
            $"""
            SELECT owner, count(*), max(lease_until) FROM transactions
            WHERE {Schema.NonTerminal} AND owner IS NOT NULL AND lease_until IS NOT NULL
            GROUP BY owner ORDER BY owner;
            """;
        var now = _clock.GetUtcNow();
        var holders = new List<LeaseHolder>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var until = StoredValues.Time(reader.GetInt64(2));
            holders.Add(new LeaseHolder(reader.GetString(0), reader.GetInt64(1), until, until <= now));
        }

        return holders;
    }

    /// <summary>The filters shared by the listing and the counts (all but status and paging), from
    /// constant fragments only (so each filter can use its index); every value is a parameter.</summary>
    private static void AppendFilters(StringBuilder sql, SqliteCommand command, TransactionQuery query)
    {
        if (query.Protocol is { } protocol)
        {
            sql.Append(" AND protocol = $protocol");
            command.Parameters.AddWithValue("$protocol", StoredValues.Protocol(protocol));
        }

        if (query.Stuck is { } stuck)
        {
            // A literal, not a parameter: the stuck-only partial index applies only to "stuck = 1".
            sql.Append(stuck ? " AND stuck = 1" : " AND stuck = 0");
        }

        if (query.Since is { } since)
        {
            sql.Append(" AND created_at >= $since");
            command.Parameters.AddWithValue("$since", StoredValues.Time(since));
        }

        if (query.Until is { } until)
        {
            sql.Append(" AND created_at < $until");
            command.Parameters.AddWithValue("$until", StoredValues.Time(until));
        }

        if (!string.IsNullOrEmpty(query.GidContains))
        {
            // instr, not LIKE: no wildcard in the text can widen the match, and it is case-sensitive like gids.
            sql.Append(" AND instr(gid, $gid_contains) > 0");
            command.Parameters.AddWithValue("$gid_contains", query.GidContains);
        }
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<string>> ListDueAsync(DateTimeOffset dueBy, int limit, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        using var lease = await RentReaderAsync(cancellationToken);
        await using var command = lease.Connection.CreateCommand();
        command.CommandText =
            $"SELECT gid FROM transactions WHERE {Schema.DueFilter} ORDER BY {Schema.DueKey}, gid LIMIT $limit;";
        command.Parameters.AddWithValue("$due_by", StoredValues.Time(dueBy));
        command.Parameters.AddWithValue("$limit", limit);
        var gids = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            gids.Add(reader.GetString(0));
        }

        return gids;
    }

    /// <inheritdoc />
    /// <remarks>The batch goes through the group-commit writer like any write, so it is committed
    /// with the writes queued beside it; keep <paramref name="batchSize"/> small (hundreds) so the
    /// batch it joins stays short.</remarks>
    public async Task<int> PurgeFinishedAsync(DateTimeOffset finishedBefore, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var request = new PurgeRequest(StoredValues.Time(finishedBefore), batchSize, cancellationToken);
        await EnqueueAsync(request, cancellationToken);
        return await request.Task;
    }

    /// <summary>Stops taking writes, commits every write already queued, and closes the file.</summary>
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
            if (_writer is not null)
            {
                await _writer.StopAsync();
            }

            _readers?.Dispose();
            if (_initialized)
            {
                Log.Closed(_logger, _path);
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Batches committed so far (tests).</summary>
    internal long CommittedBatches => _writer?.CommittedBatches ?? 0;

    /// <summary>Holds the writer before its next batch until disposed, so that tests can put several writes in one batch.</summary>
    internal IDisposable HoldWriter() =>
        (_writer ?? throw new InvalidOperationException("The store is not initialized.")).Hold();

    /// <summary>Runs a query on the writer connection, in the writer's turn (tests and diagnostics).</summary>
    internal async Task<T> QueryWriterAsync<T>(Func<SqliteConnection, T> query, CancellationToken cancellationToken)
    {
        var probe = new WriterProbe<T>(writer => query(writer.Connection), cancellationToken);
        await EnqueueAsync(probe, cancellationToken);
        return await probe.Task;
    }

    private async ValueTask EnqueueAsync(WriteRequest request, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (!_initialized)
        {
            await InitializeAsync(cancellationToken);
        }

        if (!_writer!.TryEnqueue(request))
        {
            throw new ObjectDisposedException(GetType().FullName, "The store is closed; the write was not made.");
        }
    }

    private async ValueTask<ReaderPool.Lease> RentReaderAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (!_initialized)
        {
            await InitializeAsync(cancellationToken);
        }

        return _readers!.Rent();
    }
}
