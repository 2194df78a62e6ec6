using Npgsql;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests;

[Collection(PostgresCollection.Name)]
public sealed class ParticipantDatabaseTests(PostgresFixture postgres)
{
    [Fact]
    public async Task PostgreSql_UncommittedTransaction_RollsBackOnDispose()
    {
        await using var source = NpgsqlDataSource.Create(await postgres.Server.CreateDatabaseAsync("pdb"));
        await ShouldRollBackOnDisposeAsync(new PostgreSqlParticipantDatabase(source));
    }

    [Fact]
    public async Task PostgreSql_DdlFromManyProcessesAtOnce_NeverRacesOnCreateTable()
    {
        // As two replicas of one participant starting together: each opens its own pool and runs the
        // kit's CREATE TABLE IF NOT EXISTS. Unserialized, PostgreSQL fails some of them with a
        // unique violation in pg_type, and the host's start with it.
        var connectionString = await postgres.Server.CreateDatabaseAsync("pdb-ddl");
        var sources = Enumerable.Range(0, 8).Select(_ => NpgsqlDataSource.Create(connectionString)).ToList();
        try
        {
            for (var round = 0; round < 10; round++)
            {
                var ddl = $"CREATE TABLE IF NOT EXISTS race_{round} (x int); CREATE INDEX IF NOT EXISTS race_{round}_x ON race_{round} (x);";
                await Task.WhenAll(sources.Select(source =>
                    new PostgreSqlParticipantDatabase(source).ExecuteDdlAsync(ddl, CancellationToken.None)));
            }
        }
        finally
        {
            foreach (var source in sources)
            {
                await source.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task Sqlite_UncommittedTransaction_RollsBackOnDispose()
    {
        using var dir = new TempDir("pdb-sqlite");
        await ShouldRollBackOnDisposeAsync(new SqliteParticipantDatabase(Path.Combine(dir.Path, "p.db")));
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    }

    /// <summary>An uncommitted transaction leaves nothing behind; a committed one does.</summary>
    private static async Task ShouldRollBackOnDisposeAsync(ParticipantDatabase database)
    {
        await database.ExecuteDdlAsync("CREATE TABLE IF NOT EXISTS t (x int)", CancellationToken.None);

        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            await using var insert = tx.CreateCommand("INSERT INTO t VALUES (@x)", ("x", 1));
            await insert.ExecuteNonQueryAsync();
        }

        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            await using var insert = tx.CreateCommand("INSERT INTO t VALUES (@x)", ("x", 2));
            await insert.ExecuteNonQueryAsync();
            await tx.CommitAsync(CancellationToken.None);
        }

        await using var read = await database.BeginAsync(CancellationToken.None);
        await using var count = read.CreateCommand("SELECT coalesce(sum(x), 0) FROM t");
        Convert.ToInt64(await count.ExecuteScalarAsync()).ShouldBe(2);
    }
}
