using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;

namespace Treaty.Storage.Sqlite.Tests;

/// <summary>A database file in a temporary directory of its own, deleted with it.</summary>
internal sealed class TempDatabase : IDisposable
{
    public TempDatabase()
    {
        Directory = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "treaty-sqlite-tests", Guid.NewGuid().ToString("N"));
        // A directory that does not exist yet: the store must create it.
        Path = System.IO.Path.Combine(Directory, "data", "treaty.db");
    }

    public string Directory { get; }

    public string Path { get; }

    public SqliteTransactionStore Open(int maxBatchSize = SqliteStoreDefaults.MaxBatchSize) =>
        new(new SqliteStoreOptions { Path = Path, MaxBatchSize = maxBatchSize }, NullLogger<SqliteTransactionStore>.Instance);

    /// <summary>A plain connection of the test's own, outside the store.</summary>
    public SqliteConnection Connect()
    {
        System.IO.Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Pooling = false }.ToString());
        connection.Open();
        return connection;
    }

    public object? Scalar(string sql)
    {
        using var connection = Connect();
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        return command.ExecuteScalar();
    }

    public void Execute(string sql)
    {
        using var connection = Connect();
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
