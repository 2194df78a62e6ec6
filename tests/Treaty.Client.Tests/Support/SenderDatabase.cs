using System.Data.Common;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Treaty.Client.Tests.Support;

/// <summary>
/// The two-phase message sender's own database: a business table <c>orders(id)</c> next to
/// Treaty's marker table. One fresh database per test.
/// </summary>
public abstract class SenderDatabase : IAsyncDisposable
{
    /// <summary>A new, closed connection.</summary>
    public abstract DbConnection Connect();

    public async Task CreateSchemaAsync()
    {
        await using var connection = Connect();
        await connection.OpenAsync();
        await ExecuteAsync(connection, null, "CREATE TABLE orders (id TEXT NOT NULL PRIMARY KEY)");
    }

    /// <summary>The business change of a test: one order row, in the sender's local transaction.</summary>
    public static Task InsertOrderAsync(DbTransaction transaction, string orderId, CancellationToken cancellationToken = default) =>
        ExecuteAsync(transaction.Connection!, transaction, "INSERT INTO orders (id) VALUES (@id)", cancellationToken, ("@id", orderId));

    public async Task<bool> HasOrderAsync(string orderId)
    {
        await using var connection = Connect();
        await connection.OpenAsync();
        return await ScalarAsync(connection, "SELECT COUNT(*) FROM orders WHERE id = @id", ("@id", orderId)) is long and > 0;
    }

    /// <summary>The marker's state for <paramref name="gid"/>, or null without one.</summary>
    public async Task<string?> MarkOfAsync(string gid)
    {
        await using var connection = Connect();
        await connection.OpenAsync();
        return await ScalarAsync(connection, $"SELECT state FROM {TreatyMessages.TableName} WHERE gid = @gid", ("@gid", gid)) as string;
    }

    public abstract ValueTask DisposeAsync();

    private static async Task ExecuteAsync(DbConnection connection, DbTransaction? transaction, string sql, CancellationToken cancellationToken = default, params (string Name, object Value)[] parameters)
    {
        await using var command = Command(connection, sql, parameters);
        command.Transaction = transaction;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private static async Task<object?> ScalarAsync(DbConnection connection, string sql, params (string Name, object Value)[] parameters)
    {
        await using var command = Command(connection, sql, parameters);
        return await command.ExecuteScalarAsync();
    }

    private static DbCommand Command(DbConnection connection, string sql, (string Name, object Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = name;
            parameter.Value = value;
            command.Parameters.Add(parameter);
        }

        return command;
    }
}

/// <summary>A SQLite file in WAL mode in a temp dir.</summary>
public sealed class SqliteSenderDatabase : SenderDatabase
{
    private readonly TempDir _dir = new("treaty-sender");
    private readonly string _connectionString;

    private SqliteSenderDatabase()
    {
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = Path.Combine(_dir.Path, "sender.db"),
            DefaultTimeout = 30, // also the busy timeout: how long a statement waits for SQLite's write lock
        }.ToString();
    }

    public static async Task<SqliteSenderDatabase> CreateAsync()
    {
        var database = new SqliteSenderDatabase();
        await using var connection = database.Connect();
        await connection.OpenAsync();
        await using var wal = connection.CreateCommand();
        wal.CommandText = "PRAGMA journal_mode = WAL";
        await wal.ExecuteNonQueryAsync();
        await database.CreateSchemaAsync();
        return database;
    }

    public override DbConnection Connect() => new SqliteConnection(_connectionString);

    public override ValueTask DisposeAsync()
    {
        SqliteConnection.ClearAllPools();
        _dir.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>A fresh database on the class's throw-away PostgreSQL cluster.</summary>
public sealed class PostgreSqlSenderDatabase : SenderDatabase
{
    private readonly string _connectionString;

    private PostgreSqlSenderDatabase(string connectionString) => _connectionString = connectionString;

    public static async Task<PostgreSqlSenderDatabase> CreateAsync(PostgresServer server)
    {
        var database = new PostgreSqlSenderDatabase(await server.CreateDatabaseAsync("sender"));
        await database.CreateSchemaAsync();
        return database;
    }

    public override DbConnection Connect() => new NpgsqlConnection(_connectionString);

    public override ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        return ValueTask.CompletedTask;
    }
}
