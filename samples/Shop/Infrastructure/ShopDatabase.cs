using Microsoft.Data.Sqlite;
using Treaty.AspNetCore.Data;

namespace Shop.Infrastructure;

/// <summary>
/// One service's SQLite file (WAL). Every write goes through the participant kit's
/// <see cref="SqliteParticipantDatabase"/>, whose write turn the kit's own transactions
/// (idempotency records, branch barrier, semantic locks) take too: one writer at a time, waited for
/// asynchronously, never SQLITE_BUSY. Reads use their own connections and run in parallel.
/// </summary>
internal sealed class ShopDatabase : IDisposable
{
    private readonly string _connectionString;

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
        Participant = new SqliteParticipantDatabase(path);
    }

    public string Path { get; }

    /// <summary>The kit's view of this file: the transactions of the barrier, the idempotency keys and the Shop's own writes.</summary>
    public SqliteParticipantDatabase Participant { get; }

    /// <summary>Creates the Shop's schema and seeds it, in one transaction; safe on every start (before anything else uses the file).</summary>
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
            schema.CommandText = schemaSql;
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
            pragma.CommandText = "PRAGMA busy_timeout=10000;";
            await pragma.ExecuteNonQueryAsync(cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs <paramref name="work"/> in one write transaction of the kit (BEGIN IMMEDIATE, synchronous=FULL), committed when it returns.</summary>
    /// <remarks>Never call this from inside a kit transaction (an idempotent handler, a branch handler): it would wait for the turn that transaction holds.</remarks>
    public async Task<T> WriteAsync<T>(Func<ParticipantTransaction, Task<T>> work, CancellationToken cancellationToken)
    {
        await using var transaction = await Participant.BeginAsync(cancellationToken);
        var result = await work(transaction);
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    public async Task<T> ReadAsync<T>(Func<SqliteConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        return await work(connection);
    }

    /// <summary>Releases the pooled connections, so the file can be deleted or reopened elsewhere.</summary>
    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
    }
}

/// <summary>The SQLite connection and transaction under a kit transaction, for the Shop's own <see cref="Sql"/> helpers.</summary>
internal static class ShopTransaction
{
    public static (SqliteConnection Connection, SqliteTransaction Transaction) Of(ParticipantTransaction transaction) =>
        ((SqliteConnection)transaction.Connection, (SqliteTransaction)transaction.Transaction);
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
