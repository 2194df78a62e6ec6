using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.Client;
using Treaty.Core.Model;
using Treaty.Core.Security;
using Treaty.Server.Alerts;
using Treaty.Server.Tests.Support;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>The alert webhook: once per stuck episode, once when it ends, retried until delivered.</summary>
public sealed class AlertTests(ParticipantFixture fixture) : IClassFixture<ParticipantFixture>
{
    private const string Secret = "alert-secret-0123456789";
    private static readonly RetrySettings GiveUpFast = new(2, TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1));
    private readonly Participant _participant = fixture.Participant;

    [Fact]
    public async Task StuckThenRetried_OneStuckAndOneResolvedAlert_SignedAndRetriedUntilDelivered()
    {
        await using var webhook = await WebhookReceiver.StartAsync();
        webhook.FailNext(2); // the first two deliveries answer 503: the alert is sent again
        await using var coordinator = await StartCoordinatorAsync(webhook);
        var gid = Api.NewGid("alert");
        await SubmitStuckSagaAsync(coordinator, gid);

        var stuck = await webhook.WaitForAsync(a => a.Kind == "stuck" && a.Gid == gid);
        stuck.Id.ShouldBe($"{gid}/stuck/1");
        stuck.IdempotencyKey.ShouldBe(stuck.Id);
        stuck.Body.GetProperty("stuckOn").GetProperty("op").GetString().ShouldBe("compensate");
        stuck.Body.GetProperty("stuckOn").GetProperty("lastStatusCode").GetInt32().ShouldBe(503);
        stuck.Body.GetProperty("status").GetString().ShouldBe("aborting");
        stuck.Body.GetProperty("link").GetString().ShouldBe($"/api/v1/transactions/{gid}");
        CallbackSignature.Verify(Encoding.UTF8.GetBytes(Secret), stuck.Signature, stuck.RawBody, DateTimeOffset.UtcNow).ShouldBe(SignatureCheck.Valid);
        webhook.Attempts(stuck.Id).ShouldBe(3);

        _participant.Recover($"{gid}/s1/compensate");
        (await coordinator.Client.RetryAsync(gid)).Stuck.ShouldBeFalse();
        var resolved = await webhook.WaitForAsync(a => a.Kind == "resolved" && a.Gid == gid);
        resolved.Id.ShouldBe($"{gid}/resolved/1");
        resolved.Body.GetProperty("message").GetString().ShouldNotBeNull().ShouldContain("no longer stuck");

        // Nothing more comes: one alert per episode, however often the monitor looks.
        await Api.WaitForStatusAsync(coordinator.Http, gid, "aborted");
        await Task.Delay(600);
        webhook.Delivered.Where(a => a.Gid == gid).Select(a => a.Id).ShouldBe([$"{gid}/stuck/1", $"{gid}/resolved/1"]);
    }

    [Fact]
    public async Task WebhookDownAcrossARestart_AlertDeliveredOnceAfterwards()
    {
        await using var webhook = await WebhookReceiver.StartAsync();
        webhook.FailNext(int.MaxValue);
        using var dataDir = new TempDir("treaty-alerts");
        var gid = Api.NewGid("alertrestart");
        await using (var first = await StartCoordinatorAsync(webhook, dataDir))
        {
            await SubmitStuckSagaAsync(first, gid);
            await Eventually(() => webhook.Attempts($"{gid}/stuck/1") >= 2, "the webhook to be tried twice");
            var recorded = await first.Services.GetRequiredService<AlertMonitor>().AlertsAsync(CancellationToken.None);
            recorded.Single(r => r.Gid == gid).DeliveredAt.ShouldBeNull();
        }

        webhook.FailNext(0);
        await using var second = await StartCoordinatorAsync(webhook, dataDir);
        var alert = await webhook.WaitForAsync(a => a.Gid == gid);
        alert.Id.ShouldBe($"{gid}/stuck/1");
        await Task.Delay(600);
        webhook.Delivered.Count(a => a.Gid == gid).ShouldBe(1);
        var rows = await second.Services.GetRequiredService<AlertMonitor>().AlertsAsync(CancellationToken.None);
        rows.Where(r => r.Gid == gid).ShouldHaveSingleItem().DeliveredAt.ShouldNotBeNull();
    }

    [Fact]
    public async Task WebhookDown_TheResolvedAlertWaitsBehindTheStuckOne_AndTheLoopSleepsMeanwhile()
    {
        await using var webhook = await WebhookReceiver.StartAsync();
        webhook.FailNext(int.MaxValue);
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o =>
        {
            o.AlertWebhook = webhook.Url;
            o.AlertRetryInitialDelay = TimeSpan.FromSeconds(2);
            o.AlertRetryMaxDelay = TimeSpan.FromSeconds(2);
            o.AlertReconcileInterval = TimeSpan.FromMinutes(1);
        });
        var monitor = coordinator.Services.GetRequiredService<AlertMonitor>();
        var gid = Api.NewGid("alertblocked");
        await SubmitStuckSagaAsync(coordinator, gid);
        await Eventually(() => webhook.Attempts($"{gid}/stuck/1") >= 1, "the first delivery attempt");
        _participant.Recover($"{gid}/s1/compensate");
        (await coordinator.Client.RetryAsync(gid)).Stuck.ShouldBeFalse();
        await Eventually(() => monitor.AlertsAsync(CancellationToken.None).Result.Any(a => a.Id == $"{gid}/resolved/1"), "the resolved alert to be recorded");

        // The resolved alert is due but waits for the stuck one, which waits 2 s for its next try:
        // the loop sleeps until then rather than looking again and again.
        var before = monitor.Rounds;
        await Task.Delay(1000);
        (monitor.Rounds - before).ShouldBeLessThan(10);
        webhook.Attempts($"{gid}/resolved/1").ShouldBe(0);

        webhook.FailNext(0);
        await webhook.WaitForAsync(a => a.Id == $"{gid}/resolved/1");
        webhook.Delivered.Where(a => a.Gid == gid).Select(a => a.Id).ShouldBe([$"{gid}/stuck/1", $"{gid}/resolved/1"]);
    }

    [Fact]
    public async Task StuckBeforeTheWebhookWasConfigured_AlertedAtStart()
    {
        await using var webhook = await WebhookReceiver.StartAsync();
        using var dataDir = new TempDir("treaty-alerts");
        var gid = Api.NewGid("alertlate");
        await using (var before = await InProcessCoordinator.StartAsync(dataDir: dataDir))
        {
            await SubmitStuckSagaAsync(before, gid);
        }

        await using var after = await StartCoordinatorAsync(webhook, dataDir);
        (await webhook.WaitForAsync(a => a.Gid == gid)).Id.ShouldBe($"{gid}/stuck/1");
    }

    [Fact]
    public async Task Webhook_AnswersARedirect_NotFollowedAndRetried()
    {
        await using var target = await WebhookReceiver.StartAsync();
        await using var webhook = await WebhookReceiver.StartAsync();
        webhook.RedirectTo(target.Url);
        await using var coordinator = await StartCoordinatorAsync(webhook);
        var gid = Api.NewGid("alertredirect");
        await SubmitStuckSagaAsync(coordinator, gid);

        await Eventually(() => webhook.Attempts($"{gid}/stuck/1") >= 2, "the redirected alert to be tried again");
        target.Delivered.ShouldBeEmpty();
        target.AllAttempts.ShouldBe(0);
    }

    [Theory]
    [InlineData(false, 0, 0, true, "")] // never stuck: nothing
    [InlineData(true, 1, 0, true, "stuck/1")] // became stuck
    [InlineData(true, 0, 0, true, "stuck/1")] // stuck, its journal entry not durable yet: still the first episode
    [InlineData(true, 1, 1, false, "")] // still stuck: nothing more
    [InlineData(false, 0, 1, false, "resolved/1")] // moving again or finished
    [InlineData(false, 0, 1, true, "")] // already resolved
    [InlineData(true, 2, 1, false, "resolved/1 stuck/2")] // retried and stuck again between two looks
    [InlineData(true, 2, 1, true, "stuck/2")] // stuck again after a resolved episode
    [InlineData(true, 1, 2, true, "")] // the journal lags the outbox: never an older episode
    public void Rules_DecideWhatToRecord(bool stuck, int journalEpisodes, int lastEpisode, bool lastResolved, string expected)
    {
        var state = StateFor(stuck);
        var ledger = lastEpisode == 0 ? AlertLedger.None : new AlertLedger(lastEpisode, lastResolved);
        var alerts = AlertRules.Decide(state, journalEpisodes, ledger);
        string.Join(' ', alerts.Select(a => $"{a.Kind}/{a.Episode}")).ShouldBe(expected);
    }

    [Fact]
    public void Rules_TransactionGone_ResolvesAnOpenEpisode() =>
        AlertRules.Decide(null, 0, new AlertLedger(3, false)).ShouldBe([new AlertToRecord("resolved", 3)]);

    [Fact]
    public void Options_WebhookMustBeAnHttpUrl_SecretLongEnough()
    {
        Should.Throw<ArgumentException>(() => new TreatyServerOptions { AlertWebhook = "ftp://x/alerts" }.Validate()).Message.ShouldContain("AlertWebhook");
        Should.Throw<ArgumentException>(() => new TreatyServerOptions { AlertWebhook = "http://127.0.0.1/a", AlertSecret = "short" }.Validate())
            .Message.ShouldContain("AlertSecret");
    }

    private static TransactionState StateFor(bool stuck)
    {
        var spec = new TransactionSpec("g", Protocol.Saga, "{}", [], null, null);
        var now = DateTimeOffset.UnixEpoch;
        var state = new TransactionState(spec, "f", TransactionStatus.Aborting, null, now, now, null, now, [], 1);
        return stuck ? state with { StuckOn = new StuckCause("s1", "compensate", 2, 503, null) } : state;
    }

    private static Task<InProcessCoordinator> StartCoordinatorAsync(WebhookReceiver webhook, TempDir? dataDir = null) =>
        InProcessCoordinator.StartAsync(dataDir: dataDir, configureOptions: o =>
        {
            o.AlertWebhook = webhook.Url;
            o.AlertSecret = Secret;
            o.AlertRetryInitialDelay = TimeSpan.FromMilliseconds(50);
            o.AlertRetryMaxDelay = TimeSpan.FromMilliseconds(200);
            o.AlertReconcileInterval = TimeSpan.FromMilliseconds(300);
        });

    /// <summary>A saga whose first step's compensation keeps failing: stuck after two attempts.</summary>
    private async Task SubmitStuckSagaAsync(InProcessCoordinator coordinator, string gid)
    {
        _participant.Always($"{gid}/s1/compensate", 503);
        _participant.Always($"{gid}/s2/action", 409);
        await coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate"), retry: GiveUpFast)
            .Step("s2", _participant.Url($"{gid}/s2/action"), _participant.Url($"{gid}/s2/compensate"))
            .SubmitAsync();
        await Api.WaitUntilAsync(coordinator.Http, gid, v => v.Stuck, "stuck");
    }

    private static async Task Eventually(Func<bool> condition, string what)
    {
        var deadline = DateTimeOffset.UtcNow + Api.Patience;
        while (!condition())
        {
            if (DateTimeOffset.UtcNow > deadline)
            {
                throw new TimeoutException($"Waited {Api.Patience} for {what}.");
            }

            await Task.Delay(25);
        }
    }
}

/// <summary>One alert the webhook accepted.</summary>
internal sealed record ReceivedAlert(string Id, string Kind, string Gid, string? IdempotencyKey, string? Signature, byte[] RawBody, JsonElement Body);

/// <summary>A webhook on loopback that records what it is sent and answers as the test says.</summary>
internal sealed class WebhookReceiver : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<ReceivedAlert> _delivered = new();
    private readonly ConcurrentDictionary<string, int> _attempts = new();
    private int _failNext;
    private int _all;
    private string? _redirect;

    private WebhookReceiver(WebApplication app) => _app = app;

    public string Url { get; private set; } = "";

    public IReadOnlyList<ReceivedAlert> Delivered => [.. _delivered];

    public int AllAttempts => Volatile.Read(ref _all);

    public int Attempts(string id) => _attempts.TryGetValue(id, out var n) ? n : 0;

    public void FailNext(int times) => Volatile.Write(ref _failNext, times);

    public void RedirectTo(string url) => _redirect = url;

    public static async Task<WebhookReceiver> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var receiver = new WebhookReceiver(app);
        app.MapPost("/alerts", (Func<HttpContext, Task<IResult>>)receiver.HandleAsync);
        await app.StartAsync();
        receiver.Url = new Uri(new Uri(app.Urls.Single()), "/alerts").AbsoluteUri;
        return receiver;
    }

    public async Task<ReceivedAlert> WaitForAsync(Func<ReceivedAlert, bool> match)
    {
        var deadline = DateTimeOffset.UtcNow + Api.Patience;
        while (true)
        {
            if (_delivered.FirstOrDefault(match) is { } alert)
            {
                return alert;
            }

            if (DateTimeOffset.UtcNow > deadline)
            {
                throw new TimeoutException($"No matching alert within {Api.Patience}; delivered: {string.Join(", ", _delivered.Select(a => a.Id))}.");
            }

            await Task.Delay(25);
        }
    }

    private async Task<IResult> HandleAsync(HttpContext context)
    {
        Interlocked.Increment(ref _all);
        using var buffer = new MemoryStream();
        await context.Request.Body.CopyToAsync(buffer);
        var raw = buffer.ToArray();
        var body = JsonDocument.Parse(raw).RootElement.Clone();
        var id = body.GetProperty("id").GetString()!;
        _attempts.AddOrUpdate(id, 1, (_, n) => n + 1);
        if (_redirect is { } target)
        {
            return Results.Redirect(target);
        }

        if (Interlocked.Decrement(ref _failNext) >= 0)
        {
            return Results.StatusCode(StatusCodes.Status503ServiceUnavailable);
        }

        Interlocked.Exchange(ref _failNext, 0);
        _delivered.Enqueue(new ReceivedAlert(
            id, body.GetProperty("kind").GetString()!, body.GetProperty("gid").GetString()!,
            context.Request.Headers["Idempotency-Key"].ToString(), context.Request.Headers[CallbackSignature.HeaderName].ToString(), raw, body));
        return Results.Ok();
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
