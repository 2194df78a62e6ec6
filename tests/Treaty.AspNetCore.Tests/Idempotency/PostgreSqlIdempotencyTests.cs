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

    [Fact]
    public async Task Sweep_WaitingOnAKeyThatIsBeingReclaimed_DoesNotDeleteTheFreshClaim()
    {
        // An expired key: a new request re-claims it (an UPDATE holding the row lock) while the
        // sweeper's DELETE, which already chose that row as expired, waits for the lock.
        var now = App.Time.GetUtcNow();
        await using (var seed = await App.Database.BeginAsync(CancellationToken.None))
        {
            await using var insert = seed.CreateCommand(
                $"INSERT INTO {IdempotencyDefaults.TableName} (scope, idempotency_key, fingerprint, owner, created_at, locked_until, expires_at) " +
                "VALUES ('', 'k-race', 'fp', 'old', @t, @t, @t)",
                ("t", now.AddHours(-1).ToUnixTimeMilliseconds()));
            await insert.ExecuteNonQueryAsync();
            await seed.CommitAsync(CancellationToken.None);
        }

        await using var claim = await App.Database.BeginAsync(CancellationToken.None);
        await using (var update = claim.CreateCommand(
            $"UPDATE {IdempotencyDefaults.TableName} SET owner = 'fresh', expires_at = @expires WHERE idempotency_key = 'k-race'",
            ("expires", now.AddHours(24).ToUnixTimeMilliseconds())))
        {
            (await update.ExecuteNonQueryAsync()).ShouldBe(1);
        }

        var sweep = App.Store.SweepBatchAsync(now, 100, CancellationToken.None);
        await EventuallyAsync(async () =>
        {
            // the sweep is blocked on the claimed row
            await using var probe = await _source!.OpenConnectionAsync();
            await using var waiting = new NpgsqlCommand(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%'", probe);
            return Convert.ToInt64(await waiting.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture) == 1;
        });
        await claim.CommitAsync(CancellationToken.None);

        (await sweep).ShouldBe(0);
        (await App.ScalarAsync($"SELECT count(*) FROM {IdempotencyDefaults.TableName} WHERE idempotency_key = 'k-race' AND owner = 'fresh'")).ShouldBe(1);
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
