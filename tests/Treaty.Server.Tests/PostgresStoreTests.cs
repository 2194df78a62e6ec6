using Treaty.Client;
using Treaty.Core.Engine;
using Treaty.Server.Tests.Support;
using Treaty.Storage.PostgreSql;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>
/// The API on PostgreSQL (<c>Store = postgres</c>), with two coordinator instances on one database:
/// each drives what it leases, waits through the store for what the other drives, and takes over
/// what the other gave up.
/// </summary>
public sealed class PostgresStoreTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>, IAsyncLifetime
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private Participant _participant = null!;
    private InProcessCoordinator _a = null!;
    private InProcessCoordinator _b = null!;

    public async Task InitializeAsync()
    {
        var connectionString = await postgres.Server.CreateDatabaseAsync("server");
        _participant = await Participant.StartAsync();
        _a = await StartAsync(connectionString, "coordinator-a");
        _b = await StartAsync(connectionString, "coordinator-b");
    }

    public async Task DisposeAsync()
    {
        await _b.DisposeAsync();
        await _a.DisposeAsync();
        await _participant.DisposeAsync();
    }

    [Fact]
    public async Task Saga_SubmittedWithWait_CommitsOnPostgreSql_AndTheOtherInstanceReadsIt()
    {
        _a.Services.GetService(typeof(ITransactionStore)).ShouldBeOfType<PostgreSqlTransactionStore>();
        var gid = Api.NewGid("pg");

        var view = await Saga(_a.Client, gid).SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed");
        (await _b.Client.GetAsync(gid)).ShouldNotBeNull().Status.ShouldBe("committed");
        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1);
        _participant.EffectsOn($"{gid}/s2/action").ShouldBe(1);
        var events = (await _b.Client.GetEventsAsync(gid)).Events;
        events[^1].Kind.ShouldBe("committed");
    }

    [Fact]
    public async Task Resubmit_ToTheOtherInstanceWithWait_AnswersWhenTheDrivingInstanceFinishes()
    {
        var gid = Api.NewGid("pg-wait");
        var gate = _participant.Hold($"{gid}/s1/action");
        (await Saga(_a.Client, gid).SubmitAsync()).Status.ShouldNotBe("committed");

        var waiting = Saga(_b.Client, gid).SubmitAsync(wait: Wait);
        await Task.Delay(500);
        waiting.IsCompleted.ShouldBeFalse("B answered before A finished the saga");
        gate.Open();

        (await waiting.WaitAsync(TimeSpan.FromSeconds(15))).Status.ShouldBe("committed");
        // Driven once, by A: B only waited.
        _participant.CallsTo($"{gid}/s1/action").Count.ShouldBe(1);
    }

    [Fact]
    public async Task InstanceStops_TheOtherTakesItsTransactionOverAndFinishesIt()
    {
        using var metrics = new MetricRecorder();
        var connectionString = await postgres.Server.CreateDatabaseAsync("takeover");
        var first = await StartAsync(connectionString, "first", TimeSpan.FromSeconds(2));
        await using var second = await StartAsync(connectionString, "second", TimeSpan.FromSeconds(2));
        var gid = Api.NewGid("pg-over");
        var gate = _participant.Hold($"{gid}/s1/action");
        try
        {
            // A short call timeout: the transaction's wake-up time (when recovery may claim it) is
            // the in-flight call's deadline.
            (await Saga(first.Client, gid, TimeSpan.FromSeconds(1)).SubmitAsync()).Status.ShouldNotBe("committed");
            await WaitUntilAsync(() => _participant.CallsTo($"{gid}/s1/action").Count >= 1);
        }
        finally
        {
            // A stopping instance gives its leases up: the other claims them at once.
            await first.DisposeAsync();
        }

        gate.Open();
        var view = await second.Client.WaitAsync(gid, Wait);

        view.Status.ShouldBe("committed");
        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1);
        // Counted where it happened: a recovery by the second instance, no operator involved.
        var resumed = Of(metrics, second, "treaty.transactions.resumed").ShouldHaveSingleItem();
        resumed.Value.ShouldBe(1);
        resumed.Has("protocol", "saga").ShouldBeTrue();
        resumed.Has("takeover", false).ShouldBeTrue();
        Of(metrics, second, "treaty.leases.lost").ShouldBeEmpty();
    }

    [Fact]
    public async Task OperatorRetriesOnTheOtherInstance_ItTakesOver_TheOldOwnersLateWriteIsFenced_BothAreCounted()
    {
        using var metrics = new MetricRecorder();
        var gid = Api.NewGid("pg-operator");
        var gate = _participant.Hold($"{gid}/s1/action");
        (await Saga(_a.Client, gid).SubmitAsync()).Status.ShouldNotBe("committed");
        await WaitUntilAsync(() => _participant.CallsTo($"{gid}/s1/action").Count == 1);

        // The operator's retry reaches B while A still waits for its call: B claims the
        // transaction at the next epoch, calls s1 again (answered at once) and finishes it.
        await _b.Client.RetryAsync(gid);
        (await _b.Client.WaitAsync(gid, Wait)).Status.ShouldBe("committed");

        // A's call answers late. Its write is refused for the fence, though B has written since:
        // A hears that it lost the transaction, and lets go.
        gate.Open();
        await WaitUntilAsync(() => Of(metrics, _a, "treaty.leases.lost").Count == 1);
        Of(metrics, _a, "treaty.leases.lost").ShouldHaveSingleItem().Has("found", "write").ShouldBeTrue();
        Of(metrics, _b, "treaty.transactions.resumed").ShouldHaveSingleItem().Has("takeover", true).ShouldBeTrue();
        Of(metrics, _a, "treaty.transactions.resumed").ShouldBeEmpty();
        Of(metrics, _b, "treaty.leases.lost").ShouldBeEmpty();
        // The timeline says who took it over.
        (await _a.Client.GetEventsAsync(gid)).Events.ShouldContain(e => e.Kind == "resumed" && e.Detail == "by coordinator-b at epoch 2");
        (await _a.Client.GetAsync(gid)).ShouldNotBeNull().Status.ShouldBe("committed");
        _participant.CallsTo($"{gid}/s1/action").Count.ShouldBe(2);
        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1, "one idempotency key for both calls");
        _participant.EffectsOn($"{gid}/s2/action").ShouldBe(1);
    }

    [Fact]
    public async Task Instances_EitherCoordinatorListsBothWithWhatEachHolds()
    {
        var onA = Api.NewGid("pg-held-a");
        var onB = Api.NewGid("pg-held-b");
        var gateA = _participant.Hold($"{onA}/s1/action");
        var gateB = _participant.Hold($"{onB}/s1/action");
        (await Saga(_a.Client, onA).SubmitAsync()).Status.ShouldNotBe("committed");
        (await Saga(_b.Client, onB).SubmitAsync()).Status.ShouldNotBe("committed");
        (await Saga(_b.Client, Api.NewGid("pg-done")).SubmitAsync(wait: Wait)).Status.ShouldBe("committed");

        var fromA = await _a.Client.ListInstancesAsync();
        var fromB = await _b.Client.ListInstancesAsync();

        fromA.Self.ShouldBe("coordinator-a");
        fromB.Self.ShouldBe("coordinator-b");
        foreach (var view in new[] { fromA, fromB })
        {
            view.Instances.Select(i => (i.Instance, i.Held, i.Expired)).ShouldBe([("coordinator-a", 1L, false), ("coordinator-b", 1L, false)]);
            view.Instances.ShouldAllBe(i => i.LeaseUntil > DateTimeOffset.UtcNow);
        }

        gateA.Open();
        gateB.Open();
        (await _a.Client.WaitAsync(onA, Wait)).Status.ShouldBe("committed");
        (await _b.Client.WaitAsync(onB, Wait)).Status.ShouldBe("committed");
        (await _a.Client.ListInstancesAsync()).Instances.ShouldBeEmpty("finished transactions are nobody's");
        // Nothing to filter by: a parameter is refused, not ignored.
        using var filtered = await _a.Http.GetAsync("/api/v1/instances?stuck=true");
        var problem = await Api.ReadProblemAsync(filtered, System.Net.HttpStatusCode.BadRequest);
        problem.Errors.ShouldNotBeNull()["stuck"].ShouldBe(["The instances take no query parameters."]);
    }

    /// <summary>The measurements of <paramref name="instrument"/> by one coordinator (each has its own Meter).</summary>
    private static List<Measurement> Of(MetricRecorder metrics, InProcessCoordinator coordinator, string instrument)
    {
        var meter = ((TreatyTelemetry)coordinator.Services.GetService(typeof(TreatyTelemetry))!).Meter;
        return [.. metrics.Of(instrument).Where(m => ReferenceEquals(m.Meter, meter))];
    }

    private SagaBuilder Saga(TreatyClient client, string gid, TimeSpan? callTimeout = null) =>
        client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate"), timeout: callTimeout)
            .Step("s2", _participant.Url($"{gid}/s2/action"), _participant.Url($"{gid}/s2/compensate"));

    /// <param name="lease">A minute unless a test needs leases to run out: no renewal then runs
    /// during a test, so an instance learns of a take-over from its fenced write, and a lease shown
    /// as live stays live however slow the machine.</param>
    private static Task<InProcessCoordinator> StartAsync(string connectionString, string instance, TimeSpan? lease = null) =>
        InProcessCoordinator.StartAsync(prefix: "treaty-pg", configureOptions: o =>
        {
            o.Store = TreatyServerDefaults.PostgresStore;
            o.ConnectionString = connectionString;
            o.InstanceId = instance;
            o.LeaseDuration = lease ?? TimeSpan.FromMinutes(1);
        });

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (var i = 0; i < 200 && !condition(); i++)
        {
            await Task.Delay(50);
        }

        condition().ShouldBeTrue();
    }
}
