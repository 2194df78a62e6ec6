using Microsoft.Extensions.DependencyInjection;
using Treaty.Client;
using Treaty.Server.Alerts;
using Treaty.Server.Tests.Support;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>
/// Alerts with several coordinators on one PostgreSQL: they share one outbox in the database, so
/// every instance notices a stuck transaction but the webhook hears of it once, also after the
/// transaction moved to another instance.
/// </summary>
public sealed class PostgresAlertTests(PostgresFixture postgres, ParticipantFixture participants)
    : IClassFixture<PostgresFixture>, IClassFixture<ParticipantFixture>
{
    private static readonly RetrySettings GiveUpFast = new(2, TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1));
    private readonly Participant _participant = participants.Participant;

    [Fact]
    public async Task TwoInstances_AStuckTransaction_AlertedOnce_AndItsResolutionOnceAfterTheOtherTookItOver()
    {
        var connectionString = await postgres.Server.CreateDatabaseAsync("alerts");
        await using var webhook = await WebhookReceiver.StartAsync();
        var a = await StartAsync(connectionString, "alerts-a", webhook);
        await using var b = await StartAsync(connectionString, "alerts-b", webhook);
        var gid = Api.NewGid("pg-alert");
        try
        {
            _participant.Always($"{gid}/s1/compensate", 503);
            _participant.Always($"{gid}/s2/action", 409);
            await a.Client.Saga(gid).WithPayload(Api.Payload)
                .Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate"), retry: GiveUpFast)
                .Step("s2", _participant.Url($"{gid}/s2/action"), _participant.Url($"{gid}/s2/compensate"))
                .SubmitAsync();
            await Api.WaitUntilAsync(a.Http, gid, v => v.Stuck, "stuck");

            await webhook.WaitForAsync(x => x.Id == $"{gid}/stuck/1");
            // Both instances reconcile every 300 ms and see the stuck transaction: still one alert.
            await Task.Delay(1200);
            webhook.Attempts($"{gid}/stuck/1").ShouldBe(1);
            var seenByA = await a.Services.GetRequiredService<AlertMonitor>().AlertsAsync(CancellationToken.None);
            var seenByB = await b.Services.GetRequiredService<AlertMonitor>().AlertsAsync(CancellationToken.None);
            seenByA.Where(r => r.Gid == gid).ShouldHaveSingleItem().DeliveredAt.ShouldNotBeNull();
            seenByB.Where(r => r.Gid == gid).Select(r => r.Id).ShouldBe([$"{gid}/stuck/1"], "one outbox, shared");
        }
        finally
        {
            await a.DisposeAsync();
        }

        // A is gone; B retries the transaction (taking it over) and reports the end of the episode.
        _participant.Recover($"{gid}/s1/compensate");
        (await b.Client.RetryAsync(gid)).Stuck.ShouldBeFalse();
        await Api.WaitForStatusAsync(b.Http, gid, "aborted");
        await webhook.WaitForAsync(x => x.Id == $"{gid}/resolved/1");
        await Task.Delay(800);
        webhook.Delivered.Where(x => x.Gid == gid).Select(x => x.Id).ShouldBe([$"{gid}/stuck/1", $"{gid}/resolved/1"]);
        webhook.Attempts($"{gid}/resolved/1").ShouldBe(1);
    }

    private static Task<InProcessCoordinator> StartAsync(string connectionString, string instance, WebhookReceiver webhook) =>
        InProcessCoordinator.StartAsync(prefix: "treaty-pg-alerts", configureOptions: o =>
        {
            o.Store = TreatyServerDefaults.PostgresStore;
            o.ConnectionString = connectionString;
            o.InstanceId = instance;
            o.LeaseDuration = TimeSpan.FromSeconds(2);
            o.AlertWebhook = webhook.Url;
            o.AlertRetryInitialDelay = TimeSpan.FromMilliseconds(50);
            o.AlertRetryMaxDelay = TimeSpan.FromMilliseconds(200);
            o.AlertReconcileInterval = TimeSpan.FromMilliseconds(300);
        });
}
