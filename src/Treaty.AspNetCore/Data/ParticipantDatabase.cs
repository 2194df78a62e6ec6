using System.Data;
using System.Data.Common;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Treaty.AspNetCore.Data;

/// <summary>The SQL dialect of a participant's database.</summary>
public enum SqlDialect
{
    Sqlite,
    PostgreSql,
}

/// <summary>
/// The participant's own database, as the kit sees it: it opens local transactions in which the
/// kit's records (idempotency keys, barrier rows, semantic locks) are written together with the
/// handler's own writes, so a crash leaves both or neither.
/// </summary>
public abstract class ParticipantDatabase
{
    /// <summary>Which SQL the kit speaks to it.</summary>
    public abstract SqlDialect Dialect { get; }

    /// <summary>Opens a connection and begins a local transaction that serializes conflicting writers.</summary>
    public abstract ValueTask<ParticipantTransaction> BeginAsync(CancellationToken cancellationToken);

    // Two processes starting at once would race on CREATE TABLE IF NOT EXISTS (a unique violation in
    // pg_type, which fails the host's start); a transaction-scoped advisory lock serializes the DDL.
    // The number is arbitrary but fixed.
    private const long DdlAdvisoryLock = 0x7472_6561_7479_4944;

    /// <summary>Runs <paramref name="sql"/> (the kit's DDL, idempotent) in its own transaction, one process at a time.</summary>
    public async Task ExecuteDdlAsync(string sql, CancellationToken cancellationToken)
    {
        await using var transaction = await BeginAsync(cancellationToken);
        if (Dialect == SqlDialect.PostgreSql)
        {
            await using var advisory = transaction.CreateCommand("SELECT pg_advisory_xact_lock(@id)", ("id", DdlAdvisoryLock));
            await advisory.ExecuteNonQueryAsync(cancellationToken);
        }

        await using var command = transaction.CreateCommand(sql);
        await command.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }
}

/// <summary>One local transaction on the participant's database. Disposing without committing rolls back.</summary>
public sealed class ParticipantTransaction : IAsyncDisposable
{
    private readonly Action? _onDisposed;
    private readonly bool _ownsConnection;
    private List<Action>? _afterCommit;
    private bool _completed;
    private bool _disposed;

    internal ParticipantTransaction(DbConnection connection, DbTransaction transaction, SqlDialect dialect, Action? onDisposed = null, bool ownsConnection = true)
    {
        Connection = connection;
        Transaction = transaction;
        Dialect = dialect;
        _onDisposed = onDisposed;
        _ownsConnection = ownsConnection;
    }

    /// <summary>The open connection; use it (with <see cref="Transaction"/>) for the handler's own writes.</summary>
    public DbConnection Connection { get; }

    /// <summary>The local transaction.</summary>
    public DbTransaction Transaction { get; }

    public SqlDialect Dialect { get; }

    /// <summary>A command bound to this transaction; parameters are written <c>@name</c> in the SQL (both providers accept that form).</summary>
    public DbCommand CreateCommand(string sql, params (string Name, object? Value)[] parameters)
    {
        var command = Connection.CreateCommand();
        command.Transaction = Transaction;
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = name;
            parameter.Value = value ?? DBNull.Value;
            command.Parameters.Add(parameter);
        }

        return command;
    }

    public async Task CommitAsync(CancellationToken cancellationToken)
    {
        await Transaction.CommitAsync(cancellationToken);
        _completed = true;
        if (_afterCommit is { } callbacks)
        {
            _afterCommit = null;
            foreach (var callback in callbacks)
            {
                callback();
            }
        }
    }

    /// <summary>Runs <paramref name="callback"/> once this transaction has committed (never if it rolls back); the outbox wakes its relay this way.</summary>
    internal void AfterCommit(Action callback) => (_afterCommit ??= []).Add(callback);

    /// <summary>The transaction ended on the server by other means (<c>PREPARE TRANSACTION</c>): dispose sends nothing.</summary>
    internal void MarkCompleted() => _completed = true;

    public async Task RollbackAsync(CancellationToken cancellationToken)
    {
        if (!_completed)
        {
            _completed = true;
            await Transaction.RollbackAsync(cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        try
        {
            if (!_completed)
            {
                _completed = true;
                try
                {
                    await Transaction.RollbackAsync(CancellationToken.None);
                }
                catch (DbException)
                {
                    // the connection broke; the server rolls back on its own.
                }
                catch (InvalidOperationException)
                {
                    // already completed by the provider
                }
            }
        }
        finally
        {
            try
            {
                await Transaction.DisposeAsync();
                if (_ownsConnection)
                {
                    await Connection.DisposeAsync();
                }
            }
            finally
            {
                _onDisposed?.Invoke();
            }
        }
    }
}

/// <summary>A participant database in one SQLite file (WAL, synchronous=FULL; writers serialized by BEGIN IMMEDIATE).</summary>
public sealed class SqliteParticipantDatabase : ParticipantDatabase
{
    private static readonly TimeSpan WriterWait = TimeSpan.FromSeconds(30);
    private readonly string _connectionString;

    // SQLite has one writer at a time, and a connection waiting for the write lock (BEGIN
    // IMMEDIATE) blocks its thread while the transaction holding it awaits I/O: a burst of requests
    // would starve the thread pool. Transactions of this process take turns here first, waiting
    // asynchronously; the turn ends when the transaction is disposed.
    private readonly SemaphoreSlim _writer = new(1, 1);

    public SqliteParticipantDatabase(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
    }

    public override SqlDialect Dialect => SqlDialect.Sqlite;

    public override async ValueTask<ParticipantTransaction> BeginAsync(CancellationToken cancellationToken)
    {
        if (!await _writer.WaitAsync(WriterWait, cancellationToken))
        {
            throw new TimeoutException($"Waited {WriterWait.TotalSeconds} s for the SQLite participant database's write turn.");
        }

        SqliteConnection connection;
        try
        {
            connection = new SqliteConnection(_connectionString);
        }
        catch
        {
            _writer.Release();
            throw;
        }

        try
        {
            await connection.OpenAsync(cancellationToken);
            await using (var pragma = connection.CreateCommand())
            {
                pragma.CommandText = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=30000;";
                await pragma.ExecuteNonQueryAsync(cancellationToken);
            }

            // deferred: false → BEGIN IMMEDIATE: the write lock is taken up front, so a
            // check-then-write inside the transaction cannot race another writer.
            var transaction = connection.BeginTransaction(deferred: false);
            return new ParticipantTransaction(connection, transaction, SqlDialect.Sqlite, () => _writer.Release());
        }
        catch
        {
            await connection.DisposeAsync();
            _writer.Release();
            throw;
        }
    }
}

/// <summary>A participant database on PostgreSQL (Npgsql). Transactions are READ COMMITTED; the kit locks its own rows.</summary>
public sealed class PostgreSqlParticipantDatabase(NpgsqlDataSource dataSource) : ParticipantDatabase
{
    public override SqlDialect Dialect => SqlDialect.PostgreSql;

    /// <summary>A connection outside any transaction (prepared transactions need one: <c>COMMIT PREPARED</c> refuses to run in a transaction block).</summary>
    internal ValueTask<NpgsqlConnection> OpenConnectionAsync(CancellationToken cancellationToken) => dataSource.OpenConnectionAsync(cancellationToken);

    public override async ValueTask<ParticipantTransaction> BeginAsync(CancellationToken cancellationToken)
    {
        var connection = await dataSource.OpenConnectionAsync(cancellationToken);
        try
        {
            var transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
            return new ParticipantTransaction(connection, transaction, SqlDialect.PostgreSql);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }
}
