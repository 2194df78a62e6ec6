using System.Net;
using System.Net.Http.Headers;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Idempotency;

namespace Treaty.AspNetCore.Tests.Idempotency;

/// <summary>
/// The idempotency-key behaviour every participant database must give, end to end over real
/// Kestrel: subclassed once per store (SQLite, PostgreSQL). Each test gets its own database.
/// </summary>
public abstract class IdempotencyComplianceTests : IAsyncLifetime
{
    private const string Account = "alice";
    private const long Opening = 1_000;

    private IdempotencyTestApp? _app;

    private protected IdempotencyTestApp App => _app ?? throw new InvalidOperationException("not started");

    /// <summary>A fresh, empty participant database for one test.</summary>
    protected abstract Task<ParticipantDatabase> CreateDatabaseAsync();

    protected virtual Task DisposeDatabaseAsync() => Task.CompletedTask;

    public async Task InitializeAsync()
    {
        _app = await IdempotencyTestApp.StartAsync(await CreateDatabaseAsync());
        await App.SeedAccountAsync(Account, Opening);
    }

    public async Task DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync();
        }

        await DisposeDatabaseAsync();
    }

    [Fact]
    public async Task FirstRequest_RunsAndStoresTheResponseWithItsWrites()
    {
        var answer = await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 100));

        answer.Status.ShouldBe(201);
        answer.Replayed.ShouldBeFalse();
        answer.Json.GetProperty("chargeId").GetString().ShouldBe(App.Control.Answered.Single());
        App.Control.Runs.ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
        (await App.ScalarAsync(
            $"SELECT count(*) FROM {IdempotencyDefaults.TableName} WHERE idempotency_key = @key AND status_code = 201",
            ("key", "k-1"))).ShouldBe(1);
    }

    [Fact]
    public async Task Repeat_AfterCompletion_ReplaysTheSameBytesAndDoesNotRunAgain()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        var first = await App.SendAsync("/charges", "k-1", json);

        var second = await App.SendAsync("/charges", "k-1", json);
        var third = await App.SendAsync("/charges", "k-1", json);

        foreach (var repeat in new[] { second, third })
        {
            repeat.Status.ShouldBe(first.Status);
            repeat.ContentType.ShouldBe(first.ContentType);
            repeat.Body.ShouldBe(first.Body);
            repeat.Headers.Location.ShouldBe(first.Headers.Location);
            repeat.Replayed.ShouldBeTrue();
        }

        first.Replayed.ShouldBeFalse();
        App.Control.Runs.ShouldBe(1);
        (await App.ChargeCountAsync()).ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
    }

    [Fact]
    public async Task Repeat_WithTheSameJsonInAnotherKeyOrderAndSpacing_IsAReplay()
    {
        await App.SendAsync("/charges", "k-1", """{"account":"alice","amount":100}""");

        var repeat = await App.SendAsync("/charges", "k-1", """ { "amount" : 100,  "account" : "alice" } """);

        repeat.Status.ShouldBe(201);
        repeat.Replayed.ShouldBeTrue();
        App.Control.Runs.ShouldBe(1);
    }

    [Fact]
    public async Task ConcurrentRequests_WithOneKey_RunTheHandlerOnce()
    {
        const int Clients = 48;
        var json = IdempotencyTestApp.ChargeJson(Account, 100);

        // the handler lingers so that requests overlap it
        App.Control.BeforeAnswer = () => Task.Delay(TimeSpan.FromMilliseconds(300));
        using var start = new ManualResetEventSlim(false);
        var requests = Enumerable.Range(0, Clients).Select(_ => Task.Run(async () =>
        {
            start.Wait();
            return await App.SendAsync("/charges", "one-key", json);
        })).ToArray();
        start.Set();
        var answers = await Task.WhenAll(requests);

        App.Control.Runs.ShouldBe(1);
        (await App.ChargeCountAsync()).ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
        var stored = await App.SendAsync("/charges", "one-key", json);
        stored.Status.ShouldBe(201);
        stored.Replayed.ShouldBeTrue();
        stored.Json.GetProperty("chargeId").GetString().ShouldBe(App.Control.Answered.Single());
        foreach (var answer in answers)
        {
            if (answer.Status == 201)
            {
                answer.Body.ShouldBe(stored.Body);
                answer.ContentType.ShouldBe(stored.ContentType);
            }
            else
            {
                answer.Status.ShouldBe(409, answer.Text);
                answer.Json.GetProperty("type").GetString().ShouldBe(IdempotencyProblemTypes.KeyInFlight);
                answer.RetryAfter.ShouldNotBeNull();
                long.Parse(answer.RetryAfter, System.Globalization.CultureInfo.InvariantCulture).ShouldBeGreaterThan(0);
            }
        }

        answers.Count(a => a.Status == 201 && !a.Replayed).ShouldBe(1);
    }

    [Fact]
    public async Task SameKey_DifferentBody_Is409MismatchAndChangesNothing()
    {
        var first = await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 100));

        var other = await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 999));

        other.Status.ShouldBe(409);
        other.ContentType.ShouldBe("application/problem+json");
        other.Json.GetProperty("type").GetString().ShouldBe(IdempotencyProblemTypes.KeyMismatch);
        App.Control.Runs.ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
        var again = await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 100));
        again.Replayed.ShouldBeTrue();
        again.Body.ShouldBe(first.Body);
    }

    [Fact]
    public async Task SameKey_SameRoutePatternButAnotherPath_IsAMismatch()
    {
        var first = await App.SendAsync("/orders/1", "k-1", "{}");
        var second = await App.SendAsync("/orders/2", "k-1", "{}");

        first.Status.ShouldBe(200);
        second.Status.ShouldBe(409);
        second.Json.GetProperty("type").GetString().ShouldBe(IdempotencyProblemTypes.KeyMismatch);
    }

    [Fact]
    public async Task SameKey_FromTwoUsers_IsTwoKeys()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        var alice = await App.SendAsync("/charges", "k-1", json, user: "user-a");
        var bob = await App.SendAsync("/charges", "k-1", json, user: "user-b");
        var aliceAgain = await App.SendAsync("/charges", "k-1", json, user: "user-a");

        alice.Replayed.ShouldBeFalse();
        bob.Replayed.ShouldBeFalse();
        bob.Body.ShouldNotBe(alice.Body);
        aliceAgain.Replayed.ShouldBeTrue();
        aliceAgain.Body.ShouldBe(alice.Body);
        App.Control.Runs.ShouldBe(2);
    }

    [Fact]
    public async Task MissingKey_OnARequiredEndpoint_Is400NamingTheHeader()
    {
        var answer = await App.SendAsync("/charges", key: null, IdempotencyTestApp.ChargeJson(Account, 100));

        answer.Status.ShouldBe(400);
        answer.ContentType.ShouldBe("application/problem+json");
        answer.Json.GetProperty("errors").TryGetProperty("Idempotency-Key", out _).ShouldBeTrue();
        answer.Json.GetProperty("detail").GetString()!.ShouldContain("Idempotency-Key");
        App.Control.Runs.ShouldBe(0);
        (await App.KeyCountAsync()).ShouldBe(0);
    }

    [Theory]
    [InlineData("\"\"")]
    [InlineData("")]
    public async Task EmptyKey_Is400(string key)
    {
        var answer = await App.SendAsync("/charges", key, IdempotencyTestApp.ChargeJson(Account, 100));

        answer.Status.ShouldBe(400);
        answer.Json.GetProperty("errors").GetProperty("Idempotency-Key")[0].GetString().ShouldNotBeNull().ShouldContain("empty");
        App.Control.Runs.ShouldBe(0);
    }

    [Fact]
    public async Task KeyOf256Characters_Is400_And255Runs()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 1);
        var tooLong = await App.SendAsync("/charges", new string('k', 256), json);
        var longest = await App.SendAsync("/charges", new string('k', 255), json);

        tooLong.Status.ShouldBe(400);
        tooLong.Json.GetProperty("errors").GetProperty("Idempotency-Key")[0].GetString().ShouldNotBeNull().ShouldContain("255");
        longest.Status.ShouldBe(201);
        App.Control.Runs.ShouldBe(1);
    }

    [Fact]
    public async Task QuotedKey_IsTheSameKeyAsTheBareToken()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        var bare = await App.SendAsync("/charges", "abc", json);
        var quoted = await App.SendAsync("/charges", "\"abc\"", json);

        quoted.Replayed.ShouldBeTrue();
        quoted.Body.ShouldBe(bare.Body);
    }

    [Fact]
    public async Task OptionalEndpoint_WithoutKey_RunsWithoutATransaction_AndWithAKeyInOne()
    {
        var without = await App.SendAsync("/optional", key: null, json: null);
        var with = await App.SendAsync("/optional", "k-1", json: null);
        var plain = await App.SendAsync("/plain", "k-1", json: null);

        without.Text.ShouldBe("no transaction");
        with.Text.ShouldBe("in a transaction");
        plain.Text.ShouldBe("no transaction");
        (await App.KeyCountAsync()).ShouldBe(1);
    }

    [Fact]
    public async Task HandlerThrowing_Is500_RollsBackItsWrites_ReleasesTheKey_AndARetryRuns()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        App.Control.FailNext(1);

        var failed = await App.SendAsync("/charges", "k-1", json);

        failed.Status.ShouldBe(500);
        failed.ContentType.ShouldBe("application/problem+json");
        (await App.BalanceAsync(Account)).ShouldBe(Opening);
        (await App.ChargeCountAsync()).ShouldBe(0);
        (await App.KeyCountAsync()).ShouldBe(0);

        var retry = await App.SendAsync("/charges", "k-1", json);

        retry.Status.ShouldBe(201);
        retry.Replayed.ShouldBeFalse();
        App.Control.Runs.ShouldBe(2);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
        (await App.ChargeCountAsync()).ShouldBe(1);
    }

    [Fact]
    public async Task Handler503_RollsBackAndReleases_AndARetryRuns()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        App.Control.Answer503 = true;

        var unavailable = await App.SendAsync("/charges", "k-1", json);

        unavailable.Status.ShouldBe(503);
        (await App.ChargeCountAsync()).ShouldBe(0);
        (await App.KeyCountAsync()).ShouldBe(0);

        App.Control.Answer503 = false;
        var retry = await App.SendAsync("/charges", "k-1", json);
        retry.Status.ShouldBe(201);
        retry.Replayed.ShouldBeFalse();
        (await App.ChargeCountAsync()).ShouldBe(1);
    }

    [Fact]
    public async Task BusinessRejection422_IsStoredWithItsWrites_AndReplayed()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, Opening + 1);

        var declined = await App.SendAsync("/charges", "k-1", json);
        await App.SeedAccountAsync("ignored", 0); // unrelated write between the two
        var replay = await App.SendAsync("/charges", "k-1", json);

        declined.Status.ShouldBe(422);
        declined.ContentType.ShouldBe("application/problem+json");
        replay.Status.ShouldBe(422);
        replay.Replayed.ShouldBeTrue();
        replay.Body.ShouldBe(declined.Body);
        App.Control.Runs.ShouldBe(1);
        (await App.ScalarAsync("SELECT count(*) FROM declines")).ShouldBe(1);
    }

    [Fact]
    public async Task ExpiredKey_IsAbsent_TheRequestRunsAgain()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        await App.SendAsync("/charges", "k-1", json);

        App.Time.Advance(IdempotencyDefaults.KeyLifetime - TimeSpan.FromSeconds(1));
        (await App.SendAsync("/charges", "k-1", json)).Replayed.ShouldBeTrue();

        App.Time.Advance(TimeSpan.FromSeconds(1));
        var afterExpiry = await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 7));

        afterExpiry.Status.ShouldBe(201);
        afterExpiry.Replayed.ShouldBeFalse();
        App.Control.Runs.ShouldBe(2);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 107);
        (await App.SendAsync("/charges", "k-1", IdempotencyTestApp.ChargeJson(Account, 7))).Replayed.ShouldBeTrue();
    }

    [Fact]
    public async Task Sweeper_DeletesExpiredKeys_OnItsInterval()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 1);
        await App.SendAsync("/charges", "old", json);
        App.Time.Advance(TimeSpan.FromHours(12));
        await App.SendAsync("/charges", "young", json);

        // the sweeper's timer fires on the manual clock; the old key expires, the young one does not
        App.Time.Advance(TimeSpan.FromHours(12));
        await EventuallyAsync(async () => await App.KeyCountAsync() == 1);

        (await App.ScalarAsync($"SELECT count(*) FROM {IdempotencyDefaults.TableName} WHERE idempotency_key = @key", ("key", "young"))).ShouldBe(1);
        (await App.SendAsync("/charges", "young", json)).Replayed.ShouldBeTrue();
    }

    [Fact]
    public async Task Sweep_DeletesOnlyExpiredKeys_InBatches()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 1);
        for (var i = 0; i < 5; i++)
        {
            await App.SendAsync("/charges", $"k-{i}", json);
        }

        var now = App.Time.GetUtcNow();
        (await App.Store.SweepAsync(now + IdempotencyDefaults.KeyLifetime - TimeSpan.FromMilliseconds(1), CancellationToken.None)).ShouldBe(0);
        (await App.Store.SweepBatchAsync(now + IdempotencyDefaults.KeyLifetime, 2, CancellationToken.None)).ShouldBe(2);
        (await App.Store.SweepAsync(now + IdempotencyDefaults.KeyLifetime, CancellationToken.None)).ShouldBe(3);
        (await App.KeyCountAsync()).ShouldBe(0);
    }

    [Fact]
    public async Task AbandonedKey_IsInFlightUntilItsLockExpires_ThenTakenOver()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);

        // what a request that crashed mid-handler leaves: a claim that never completes
        var crashed = await App.Store.ClaimAsync(string.Empty, "k-1", ChargeFingerprint(json), CancellationToken.None);
        crashed.Decision.Action.ShouldBe(IdempotencyAction.Run);

        var during = await App.SendAsync("/charges", "k-1", json);
        during.Status.ShouldBe(409);
        during.Json.GetProperty("type").GetString().ShouldBe(IdempotencyProblemTypes.KeyInFlight);
        during.RetryAfter.ShouldBe("60");

        App.Time.Advance(TimeSpan.FromSeconds(45));
        (await App.SendAsync("/charges", "k-1", json)).RetryAfter.ShouldBe("15");

        App.Time.Advance(TimeSpan.FromSeconds(15));
        var after = await App.SendAsync("/charges", "k-1", json);

        after.Status.ShouldBe(201);
        after.Replayed.ShouldBeFalse();
        App.Control.Runs.ShouldBe(1);
        (await App.ChargeCountAsync()).ShouldBe(1);

        // the crashed claim's owner can no longer release the key it lost
        await App.Store.ReleaseAsync(string.Empty, "k-1", crashed.Owner!, CancellationToken.None);
        (await App.SendAsync("/charges", "k-1", json)).Replayed.ShouldBeTrue();
    }

    [Fact]
    public async Task AbandonedKey_TwoTakersAtOnce_OnlyOneWins()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);
        var fingerprint = ChargeFingerprint(json);
        await App.Store.ClaimAsync(string.Empty, "k-1", fingerprint, CancellationToken.None);
        App.Time.Advance(IdempotencyDefaults.LockTimeout);

        var claims = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ =>
            Task.Run(() => App.Store.ClaimAsync(string.Empty, "k-1", fingerprint, CancellationToken.None))));

        claims.Count(c => c.Decision.Action == IdempotencyAction.TakeOver).ShouldBe(1);
        claims.Where(c => c.Decision.Action != IdempotencyAction.TakeOver).ShouldAllBe(c => c.Decision.Action == IdempotencyAction.InFlight);
    }

    [Fact]
    public async Task ControllerAction_WithTheAttribute_IsIdempotentToo()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 100);

        var missing = await App.SendAsync("/idempotency-tests/controller-charges", key: null, json);
        var first = await App.SendAsync("/idempotency-tests/controller-charges", "c-1", json);
        var repeat = await App.SendAsync("/idempotency-tests/controller-charges", "c-1", json);
        var mismatch = await App.SendAsync("/idempotency-tests/controller-charges", "c-1", IdempotencyTestApp.ChargeJson(Account, 5));

        missing.Status.ShouldBe(400);
        first.Status.ShouldBe(201);
        repeat.Replayed.ShouldBeTrue();
        repeat.Body.ShouldBe(first.Body);
        mismatch.Status.ShouldBe(409);
        App.Control.Runs.ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 100);
    }

    [Fact]
    public async Task DoubleChargeStory_ResponseLostToAClientTimeout_RetryGetsTheOriginalResponse_OneDebit()
    {
        var json = IdempotencyTestApp.ChargeJson(Account, 250);
        var slow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var charging = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        App.Control.BeforeAnswer = () =>
        {
            charging.TrySetResult();
            return slow.Task;
        };

        // the user clicks Buy; the charge is slow and the client gives up: the response is lost.
        // It gives up once the server is charging (a fixed client timeout could fire before a busy
        // server even started, and then nothing would be charged at all).
        using (var impatient = new HttpClient { BaseAddress = App.BaseAddress, Timeout = Timeout.InfiniteTimeSpan })
        {
            var buy = App.SendAsync("/charges", "buy-1", json, client: impatient);
            await charging.Task.WaitAsync(TimeSpan.FromSeconds(15));
            impatient.CancelPendingRequests();
            await Should.ThrowAsync<TaskCanceledException>(() => buy);
        }

        // meanwhile the server finishes the charge, for a client that is gone
        slow.SetResult();
        await EventuallyAsync(async () => await App.ScalarAsync(
            $"SELECT count(*) FROM {IdempotencyDefaults.TableName} WHERE status_code IS NOT NULL") == 1);

        // the user clicks again, with the same key
        var retry = await App.SendAsync("/charges", "buy-1", json);

        retry.Status.ShouldBe(201);
        retry.Replayed.ShouldBeTrue();
        retry.Json.GetProperty("chargeId").GetString().ShouldBe(App.Control.Answered.Single());
        App.Control.Runs.ShouldBe(1);
        (await App.ChargeCountAsync()).ShouldBe(1);
        (await App.BalanceAsync(Account)).ShouldBe(Opening - 250);
    }

    [Fact]
    public async Task HandlerWritingThroughTheBodyPipeWithoutFlushing_GetsAndStoresItsWholeBody()
    {
        var first = await App.SendAsync("/pipe", "k-pipe", "{}");
        var replay = await App.SendAsync("/pipe", "k-pipe", "{}");

        first.Status.ShouldBe(201);
        first.Text.ShouldBe("written through the pipe");
        replay.Replayed.ShouldBeTrue();
        replay.Body.ShouldBe(first.Body);
    }

    [Fact]
    public async Task KeyTable_CreationIsIdempotent()
    {
        await App.Store.EnsureSchemaAsync(CancellationToken.None);
        var second = new IdempotencyStore(
            App.Database,
            App.Time,
            Microsoft.Extensions.Options.Options.Create(new IdempotencyOptions()),
            Microsoft.Extensions.Logging.Abstractions.NullLogger<IdempotencyStore>.Instance);

        await second.EnsureSchemaAsync(CancellationToken.None);

        (await App.KeyCountAsync()).ShouldBe(0);
    }

    private protected static string ChargeFingerprint(string json) =>
        IdempotencyFingerprint.Compute("POST", "/charges", "/charges", "application/json; charset=utf-8", System.Text.Encoding.UTF8.GetBytes(json));

    private protected static async Task EventuallyAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("the condition did not hold within 15 s");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(25));
        }
    }
}
