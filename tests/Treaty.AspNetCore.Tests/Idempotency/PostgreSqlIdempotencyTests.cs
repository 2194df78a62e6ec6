using Npgsql;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Idempotency;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.Idempotency;

/// <summary>The idempotency compliance suite on a PostgreSQL database per test, plus what only PostgreSQL can show.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlIdempotencyTests(PostgresFixture postgres) : IdempotencyComplianceTests
{
    private NpgsqlDataSource? _source;

    protected override async Task<ParticipantDatabase> CreateDatabaseAsync()
    {
        _source = NpgsqlDataSource.Create(await postgres.Server.CreateDatabaseAsync("idem"));
        return new PostgreSqlParticipantDatabase(_source);
    }

    protected override async Task DisposeDatabaseAsync()
    {
        if (_source is not null)
        {
            await _source.DisposeAsync();
        }
    }

    // SQLite cannot show this one: a running handler holds SQLite's single write lock, so a second
    // request waits for it instead of seeing the key in flight.
    [Fact]
    public async Task SlowHandler_IsInFlight_ThenTakenOverAfterTheLock_AndItsLateWritesRollBack()
    {
        var json = IdempotencyTestApp.ChargeJson("alice", 100);
        var stuck = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = 0;
        // it stalls before its writes: stalled after them, it would hold the account's row lock
        App.Control.BeforeWrites = () => Interlocked.Increment(ref runs) == 1 ? stuck.Task : Task.CompletedTask;

        var first = App.SendAsync("/charges", "k-1", json);
        await EventuallyAsync(() => Task.FromResult(App.Control.Runs == 1));

        var during = await App.SendAsync("/charges", "k-1", json);
        during.Status.ShouldBe(409);
        during.Json.GetProperty("type").GetString().ShouldBe(IdempotencyProblemTypes.KeyInFlight);
        during.RetryAfter.ShouldBe("60");

        App.Time.Advance(IdempotencyDefaults.LockTimeout);
        var takeover = await App.SendAsync("/charges", "k-1", json);
        takeover.Status.ShouldBe(201);
        takeover.Replayed.ShouldBeFalse();

        // the first request finishes late: it lost the key, so its writes roll back and it gets the winner's answer
        stuck.SetResult();
        var late = await first;
        late.Status.ShouldBe(201);
        late.Replayed.ShouldBeTrue();
        late.Body.ShouldBe(takeover.Body);
        App.Control.Runs.ShouldBe(2);
        (await App.ChargeCountAsync()).ShouldBe(1);
        (await App.BalanceAsync("alice")).ShouldBe(900);
    }
}
