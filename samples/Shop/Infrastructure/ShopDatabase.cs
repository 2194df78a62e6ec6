using Microsoft.Data.Sqlite;

namespace Shop.Infrastructure;

/// <summary>
/// One service's SQLite file (WAL). Writes go through one gate: a sample service has no need for
/// concurrent writers, and serializing them here avoids SQLITE_BUSY entirely; reads run in parallel.
/// </summary>
internal sealed class ShopDatabase : IDisposable
{
    private readonly string _connectionString;
    private readonly SemaphoreSlim _writeGate = new(1, 1);

    public ShopDatabase(string path)
    {
        Path = path;
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
    }

    public string Path { get; }

    /// <summary>Creates the schema and seeds it, in one transaction; safe on every start.</summary>
    public void Initialize(string schemaSql, Action<SqliteConnection, SqliteTransaction> seed)
    {
        using var connection = new SqliteConnection(_connectionString);
        connection.Open();
        using (var wal = connection.CreateCommand())
        {
            // Persistent in the file: set once, kept across restarts.
            wal.CommandText = "PRAGMA journal_mode=WAL;";
            wal.ExecuteNonQuery();
        }

        using var transaction = connection.BeginTransaction();
        using (var schema = connection.CreateCommand())
        {
            schema.Transaction = transaction;
            schema.CommandText = schemaSql + BranchBarrier.Schema;
            schema.ExecuteNonQuery();
        }

        seed(connection, transaction);
        transaction.Commit();
    }

    public async Task<SqliteConnection> OpenAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            using var pragma = connection.CreateCommand();
            // FULL: a branch result we answered 2xx for must survive a crash of the machine too,
            // or the coordinator and this database would disagree about what was applied.
            pragma.CommandText = "PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;";
            await pragma.ExecuteNonQueryAsync(cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs <paramref name="work"/> in one write transaction (BEGIN IMMEDIATE), committed when it returns.</summary>
    public async Task<T> WriteAsync<T>(Func<SqliteConnection, SqliteTransaction, Task<T>> work, CancellationToken cancellationToken)
    {
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            await using var connection = await OpenAsync(cancellationToken);
            await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(cancellationToken);
            var result = await work(connection, transaction);
            await transaction.CommitAsync(cancellationToken);
            return result;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    public async Task<T> ReadAsync<T>(Func<SqliteConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        return await work(connection);
    }

    /// <summary>Releases the pooled connections, so the file can be deleted or reopened elsewhere.</summary>
    public void Dispose()
    {
        using var connection = new SqliteConnection(_connectionString);
        SqliteConnection.ClearPool(connection);
        _writeGate.Dispose();
    }
}

/// <summary>Parameterized commands, never string formatting.</summary>
internal static class Sql
{
    public static SqliteCommand Command(SqliteConnection connection, SqliteTransaction? transaction, string sql, params (string Name, object? Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return command;
    }

    public static async Task<int> ExecuteAsync(SqliteConnection connection, SqliteTransaction? transaction, string sql, CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        await using var command = Command(connection, transaction, sql, parameters);
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public static string Timestamp(DateTimeOffset at) => at.ToString("O", System.Globalization.CultureInfo.InvariantCulture);

    public static DateTimeOffset ParseTimestamp(string text) =>
        DateTimeOffset.Parse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.RoundtripKind);
}
