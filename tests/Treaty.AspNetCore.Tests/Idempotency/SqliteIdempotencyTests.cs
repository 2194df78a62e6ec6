using Microsoft.Data.Sqlite;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Tests.Idempotency;

/// <summary>The idempotency compliance suite on a SQLite file per test.</summary>
public sealed class SqliteIdempotencyTests : IdempotencyComplianceTests
{
    private readonly TempDir _dir = new("idempotency-sqlite");

    protected override Task<ParticipantDatabase> CreateDatabaseAsync() =>
        Task.FromResult<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(_dir.Path, "participant.db")));

    protected override Task DisposeDatabaseAsync()
    {
        SqliteConnection.ClearAllPools();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}
