using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Server.Tests.Support;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>Retention (<c>serve --retention</c>) on a real coordinator: finished transactions go once
/// they are older than the age, unfinished ones never, and a purged gid is free again.</summary>
public sealed class RetentionTests(ParticipantFixture fixture) : IClassFixture<ParticipantFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan Age = TimeSpan.FromMilliseconds(500);
    private readonly Participant _participant = fixture.Participant;

    private string Url(string gid, string branch, string op) => _participant.Url($"{gid}/{branch}/{op}");

    private static Task<InProcessCoordinator> StartAsync(TimeSpan? retention) => InProcessCoordinator.StartAsync(configureOptions: o =>
    {
        o.Retention = retention;
        o.RetentionInterval = TimeSpan.FromMilliseconds(100);
        // Two per batch, so five finished transactions take three batches in one pass.
        o.RetentionBatchSize = 2;
        o.RetentionPause = TimeSpan.FromMilliseconds(10);
    });

    private Task<TransactionView> CommitAsync(TreatyClient client, string gid) =>
        client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
            .Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))
            .SubmitAsync(wait: Wait);

    [Fact]
    public async Task Retention_DeletesFinishedOlderThanTheAge_KeepsRunningOnesHoweverOld_AndCountsThem()
    {
        using var metrics = new MetricRecorder();
        await using var coordinator = await StartAsync(Age);
        var running = Api.NewGid("ret-running");
        // Busy: its first attempt fails retryably and the next is a minute away, so it stays running
        // for the whole test however slow the machine is.
        _participant.Always($"{running}/s1/action", 503);
        await coordinator.Client.Saga(running).WithPayload(Api.Payload)
            .Step("s1", Url(running, "s1", "action"), Url(running, "s1", "compensate"),
                retry: new RetrySettings(10, TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(1)))
            .SubmitAsync(wait: null);
        await Eventually.Async(() => Task.FromResult(_participant.CallsTo($"{running}/s1/action").Count), n => n == 1, "the first attempt failed", Wait);

        var finished = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            var gid = Api.NewGid($"ret-done{i}");
            (await CommitAsync(coordinator.Client, gid)).Status.ShouldBe("committed");
            finished.Add(gid);
        }

        foreach (var gid in finished)
        {
            await Eventually.Async(() => Api.GetAsync(coordinator.Http, gid), v => v is null, $"{gid} purged", Wait);
            using var events = await coordinator.Http.GetAsync($"{Api.Transactions}/{gid}/events");
            events.StatusCode.ShouldBe(HttpStatusCode.NotFound);
        }

        // Submitted before every finished one, so older than each of them, and still there.
        var view = (await Api.GetAsync(coordinator.Http, running)).ShouldNotBeNull();
        view.Status.ShouldBe("running");
        (TimeProvider.System.GetUtcNow() - view.CreatedAt).ShouldBeGreaterThan(Age);
        // The API may answer from the engine's memory; the row itself must be there too.
        var store = coordinator.Services.GetRequiredService<Treaty.Core.Engine.ITransactionStore>();
        (await store.GetAsync(running, CancellationToken.None)).ShouldNotBeNull().Status.ShouldBe(Treaty.Core.Model.TransactionStatus.Running);
        (await store.GetJournalAsync(running, CancellationToken.None)).ShouldNotBeEmpty();
        await Eventually.Async(
            () => Task.FromResult(metrics.Of("treaty.transactions.purged").Where(m => m.Unit == "{transaction}").Sum(m => m.Value)),
            sum => sum >= finished.Count, "treaty.transactions.purged counts the five", Wait);
    }

    [Fact]
    public async Task Retention_PurgedGid_MayBeSubmittedAgainAsANewTransaction()
    {
        await using var coordinator = await StartAsync(Age);
        var gid = Api.NewGid("ret-again");
        var first = await CommitAsync(coordinator.Client, gid);
        first.Status.ShouldBe("committed");
        await Eventually.Async(() => Api.GetAsync(coordinator.Http, gid), v => v is null, $"{gid} purged", Wait);

        var second = await CommitAsync(coordinator.Client, gid);

        second.Status.ShouldBe("committed");
        second.CreatedAt.ShouldBeGreaterThan(first.UpdatedAt);
        // The participant saw the gid's actions twice: the idempotency of a gid lasts as long as its row.
        _participant.CallsTo($"{gid}/s1/action").Count.ShouldBe(2);
    }

    [Fact]
    public async Task Retention_Off_RunsNoRetentionService()
    {
        await using var coordinator = await StartAsync(retention: null);

        coordinator.Services.GetServices<IHostedService>().ShouldNotContain(s => s is RetentionService);
        coordinator.Services.GetServices<IHostedService>().ShouldContain(s => s is RecoveryService);
    }

    [Fact]
    public async Task Retention_On_RunsTheRetentionService()
    {
        await using var coordinator = await StartAsync(Age);

        coordinator.Services.GetServices<IHostedService>().ShouldContain(s => s is RetentionService);
    }

    [Theory]
    [InlineData("7d", 7 * 24 * 60 * 60 * 1000L)]
    [InlineData("12h", 12 * 60 * 60 * 1000L)]
    [InlineData("30m", 30 * 60 * 1000L)]
    [InlineData("45s", 45 * 1000L)]
    [InlineData("500ms", 500L)]
    [InlineData(" 2D ", 2 * 24 * 60 * 60 * 1000L)]
    public void ServeRetentionFlags_ReadDurationsWithUnits(string text, long milliseconds)
    {
        var options = new TreatyServerOptions();

        Cli.ServeCommand.TryApplyRetention(text, text, options, out var problem).ShouldBeTrue(problem);

        options.Retention.ShouldBe(TimeSpan.FromMilliseconds(milliseconds));
        options.RetentionInterval.ShouldBe(TimeSpan.FromMilliseconds(milliseconds));
    }

    [Theory]
    [InlineData("7")]
    [InlineData("0d")]
    [InlineData("-1d")]
    [InlineData("1.5h")]
    [InlineData("d")]
    [InlineData("7 days")]
    [InlineData("99999999999999d")]
    public void ServeRetentionFlags_RefuseWhatIsNotADuration(string text)
    {
        var options = new TreatyServerOptions();

        Cli.ServeCommand.TryApplyRetention(text, null, options, out var problem).ShouldBeFalse();

        problem.ShouldContain("--retention");
        options.Retention.ShouldBeNull();
    }

    [Fact]
    public void ServeRetentionFlags_Absent_LeaveRetentionOff()
    {
        var options = new TreatyServerOptions();

        Cli.ServeCommand.TryApplyRetention(null, null, options, out _).ShouldBeTrue();

        options.Retention.ShouldBeNull();
        options.RetentionInterval.ShouldBe(TreatyServerDefaults.RetentionInterval);
    }

    [Fact]
    public void Options_NonPositiveRetention_AreRefused()
    {
        Should.Throw<ArgumentException>(() => new TreatyServerOptions { Retention = TimeSpan.Zero }.Validate()).Message.ShouldContain("Retention");
        Should.Throw<ArgumentException>(() => new TreatyServerOptions { RetentionBatchSize = 0 }.Validate()).Message.ShouldContain("RetentionBatchSize");
    }
}
