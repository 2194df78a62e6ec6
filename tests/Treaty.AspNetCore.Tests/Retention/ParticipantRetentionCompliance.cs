using Microsoft.Extensions.DependencyInjection;
using Treaty.AspNetCore.Retention;
using Treaty.AspNetCore.Tests.Barrier;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.Retention;

/// <summary>Retention of the barrier's rows, on every participant database.</summary>
public abstract class ParticipantRetentionCompliance : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private static readonly DateTimeOffset Old = new(2026, 1, 1, 8, 0, 0, TimeSpan.Zero);
    private TestDatabase _database = null!;
    private BarrierHost? _host;

    protected abstract Task<TestDatabase> CreateDatabaseAsync();

    private BarrierHost Host => _host ?? throw new InvalidOperationException("Not started.");

    public async Task InitializeAsync()
    {
        _database = await CreateDatabaseAsync();
        _host = await BarrierHost.StartAsync(_database.Database);
    }

    public async Task DisposeAsync()
    {
        if (_host is not null)
        {
            await _host.DisposeAsync();
        }

        if (_database is not null)
        {
            await _database.DisposeAsync();
        }
    }

    private static string NewGid() => "r-" + Guid.NewGuid().ToString("N");

    /// <summary>A barrier row recorded at <paramref name="at"/>, written as the barrier writes it (a DateTimeOffset parameter).</summary>
    private async Task RecordAsync(string gid, string op, DateTimeOffset at, string branch = "b1")
    {
        await using var transaction = await _database.Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(
            "INSERT INTO treaty_barrier (gid, branch, op, outcome, status_code, body, recorded_at) VALUES (@gid, @branch, @op, 'succeeded', 200, '{}', @at)",
            ("gid", gid), ("branch", branch), ("op", op), ("at", at));
        await command.ExecuteNonQueryAsync();
        await transaction.CommitAsync(CancellationToken.None);
    }

    [Fact]
    public async Task PurgeBarrier_DeletesBranchesRecordedBeforeTheCutoff_KeepsNewerOnes()
    {
        var old = NewGid();
        var atCutoff = NewGid();
        var recent = NewGid();
        await RecordAsync(old, "action", Old);
        await RecordAsync(old, "compensate", Old.AddMinutes(1));
        await RecordAsync(atCutoff, "action", Old.AddDays(1));
        await RecordAsync(recent, "action", Old.AddDays(2));

        var deleted = await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 100, CancellationToken.None);

        deleted.ShouldBe(2);
        (await Host.BarrierRowsAsync(old)).ShouldBeEmpty();
        (await Host.BarrierRowsAsync(atCutoff)).ShouldBe(["action"]);
        (await Host.BarrierRowsAsync(recent)).ShouldBe(["action"]);
    }

    [Fact]
    public async Task PurgeBarrier_RowsTheBarrierWroteItself_AreComparedAsInstants()
    {
        var gid = NewGid();
        (await Host.CallAsync(gid, "action")).Status.ShouldBe(200);
        var now = TimeProvider.System.GetUtcNow();

        // In another offset, to show the cutoff is an instant, not a local time.
        var hourAgo = now.AddHours(-1).ToOffset(TimeSpan.FromHours(5));
        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, hourAgo, 100, CancellationToken.None)).ShouldBe(0);
        (await Host.BarrierRowsAsync(gid)).ShouldBe(["action"]);

        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, now.AddMinutes(1).ToOffset(TimeSpan.FromHours(-7)), 100, CancellationToken.None)).ShouldBe(1);
        (await Host.BarrierRowsAsync(gid)).ShouldBeEmpty();
    }

    [Fact]
    public async Task PurgeBarrier_KeepsEveryRowOfABranchThatHasANewerOne()
    {
        var gid = NewGid();
        await RecordAsync(gid, "action", Old);
        await RecordAsync(gid, "compensate", Old.AddDays(5));
        await RecordAsync(gid, "action", Old, branch: "b2");

        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 100, CancellationToken.None)).ShouldBe(1);

        (await Host.BarrierRowsAsync(gid)).ShouldBe(["action", "compensate"]);
        (await Host.BarrierRowsAsync(gid, "b2")).ShouldBeEmpty();
    }

    [Fact]
    public async Task PurgeBarrier_TakesAtMostTheBatch_OldestFirst()
    {
        var gids = Enumerable.Range(0, 5).Select(_ => NewGid()).ToList();
        for (var i = gids.Count - 1; i >= 0; i--)
        {
            await RecordAsync(gids[i], "action", Old.AddMinutes(i));
        }

        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 2, CancellationToken.None)).ShouldBe(2);
        (await Host.BarrierRowsAsync(gids[0])).ShouldBeEmpty();
        (await Host.BarrierRowsAsync(gids[1])).ShouldBeEmpty();
        (await Host.BarrierRowsAsync(gids[2])).ShouldBe(["action"]);
        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 2, CancellationToken.None)).ShouldBe(2);
        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 2, CancellationToken.None)).ShouldBe(1);
        (await ParticipantRetention.PurgeBarrierAsync(_database.Database, Old.AddDays(1), 2, CancellationToken.None)).ShouldBe(0);
    }

    [Fact]
    public async Task PurgedBarrier_ALateRetryRunsAgain_WhichIsWhyTheAgeMustOutliveTheRetryHorizon()
    {
        var gid = NewGid();
        (await Host.CallAsync(gid, "action")).Outcome.ShouldBe("executed");
        (await Host.CallAsync(gid, "action")).Outcome.ShouldBe("replayed");

        await ParticipantRetention.PurgeBarrierAsync(_database.Database, TimeProvider.System.GetUtcNow().AddMinutes(1), 100, CancellationToken.None);

        (await Host.CallAsync(gid, "action")).Outcome.ShouldBe("executed");
        Host.Runs(gid, "action").ShouldBe(2);
    }

    [Fact]
    public async Task RetentionService_DeletesRowsOlderThanTheAge()
    {
        await using var host = await BarrierHost.StartAsync(_database.Database, services => services.AddTreatyRetention(o =>
        {
            o.BarrierAge = TimeSpan.FromMilliseconds(300);
            o.Interval = TimeSpan.FromMilliseconds(50);
            o.BatchSize = 1;
            o.Pause = TimeSpan.Zero;
        }));
        var gids = Enumerable.Range(0, 3).Select(_ => NewGid()).ToList();
        foreach (var gid in gids)
        {
            (await host.CallAsync(gid, "action")).Status.ShouldBe(200);
        }

        foreach (var gid in gids)
        {
            await WaitUntilAsync(async () => (await host.BarrierRowsAsync(gid)).Count == 0, $"{gid}'s row purged");
        }
    }

    [Fact]
    public async Task RetentionService_WithoutAnAge_RefusesToStart()
    {
        await Should.ThrowAsync<Microsoft.Extensions.Options.OptionsValidationException>(
            () => BarrierHost.StartAsync(_database.Database, services => services.AddTreatyRetention(_ => { })));
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!await condition())
        {
            clock.Elapsed.ShouldBeLessThan(Patience, what);
            await Task.Delay(25);
        }
    }
}

public sealed class SqliteParticipantRetentionTests : ParticipantRetentionCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => Task.FromResult(TestDatabase.Sqlite("retention"));
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlParticipantRetentionTests(PostgresFixture postgres) : ParticipantRetentionCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => TestDatabase.PostgreSqlAsync(postgres, "retention");
}
