using Microsoft.Data.Sqlite;
using Npgsql;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.Barrier;

/// <summary>A participant database for one test, and what to clean up after it.</summary>
public abstract class TestDatabase : IAsyncDisposable
{
    public abstract ParticipantDatabase Database { get; }

    /// <summary>PostgreSQL: the test database's connection string (for a connection of the test's own); SQLite: null.</summary>
    public virtual string? ConnectionString => null;

    public abstract ValueTask DisposeAsync();

    /// <summary>A fresh SQLite file in a temp directory.</summary>
    public static TestDatabase Sqlite(string prefix) => new SqliteTestDatabase(prefix);

    /// <summary>A fresh database in the shared PostgreSQL cluster.</summary>
    public static async Task<TestDatabase> PostgreSqlAsync(PostgresFixture postgres, string prefix) =>
        new PostgreSqlTestDatabase(NpgsqlDataSource.Create(await postgres.Server.CreateDatabaseAsync(prefix)));

    private sealed class SqliteTestDatabase : TestDatabase
    {
        private readonly TempDir _dir;

        public SqliteTestDatabase(string prefix)
        {
            _dir = new TempDir(prefix);
            Database = new SqliteParticipantDatabase(Path.Combine(_dir.Path, "participant.db"));
        }

        public override ParticipantDatabase Database { get; }

        public override ValueTask DisposeAsync()
        {
            SqliteConnection.ClearAllPools();
            _dir.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class PostgreSqlTestDatabase(NpgsqlDataSource source) : TestDatabase
    {
        public override ParticipantDatabase Database { get; } = new PostgreSqlParticipantDatabase(source);

        public override string ConnectionString => source.ConnectionString;

        public override ValueTask DisposeAsync() => source.DisposeAsync();
    }
}
