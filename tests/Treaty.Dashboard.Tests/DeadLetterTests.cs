using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Playwright;
using Treaty.Dashboard.Tests.Support;
using Treaty.Testing.DeadLetterSupport;
using static Microsoft.Playwright.Assertions;

namespace Treaty.Dashboard.Tests;

/// <summary>
/// The dead-letter view in a real browser: a real service (Treaty.Messaging on SQLite) dead-letters
/// a poison message, the page shows it with its attempts and a link to its transaction, a second
/// source that is down is reported beside it, and once the cause is fixed an operator presses
/// Replay and watches the message handled, once.
/// </summary>
public sealed class DeadLetterTests(DeadLetterTests.ServiceFixture fixture) : IClassFixture<DeadLetterTests.ServiceFixture>, IAsyncLifetime
{
    private IBrowserContext _context = null!;
    private IPage _page = null!;
    private List<string> _errors = null!;

    public async Task InitializeAsync()
    {
        SetDefaultExpectTimeout(20_000);
        (_context, _page, _errors) = await fixture.Browser.NewPageAsync(fixture.Coordinator.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        await _context.CloseAsync();
        _errors.ShouldBeEmpty();
    }

    [Fact]
    public async Task PoisonMessage_IsShown_AndReplayAfterTheFix_HandlesItOnce_TheListFollows()
    {
        var gid = DashboardFixture.NewGid("poison");
        var messageId = "m-" + gid;
        // The saga the message belongs to is known to the coordinator (a choreography report), so the page links it.
        using (var reported = await fixture.Http.PostAsync("/api/v1/choreography/events", new StringContent(
            $$"""{ "messageId": "e-{{gid}}", "type": "order.created", "service": "order", "correlationId": "{{gid}}" }""", Encoding.UTF8, "application/json")))
        {
            reported.IsSuccessStatusCode.ShouldBeTrue(await reported.Content.ReadAsStringAsync());
        }

        (await fixture.Service.DeliverAsync(messageId, gid)).ShouldBeTrue();

        await _page.GotoAsync("/#/dead-letters");

        var row = _page.Locator($"#dl-rows tr[data-message-id='{messageId}']");
        await Expect(row).ToBeVisibleAsync();
        await Expect(row.Locator("td").First).ToHaveTextAsync("inventory");
        await Expect(row.Locator(".dl-error")).ToContainTextAsync($"no stock row for order {gid}");
        await Expect(row).ToHaveAttributeAsync("data-status", "dead");
        await Expect(row.Locator("td.correlation a.gid")).ToHaveAttributeAsync("href", $"#/tx/{gid}");
        await Expect(_page.Locator("#dl-sources [data-source=inventory] .n")).ToHaveTextAsync("1");
        await Expect(_page.Locator("#dl-sources [data-source=payment]")).ToContainTextAsync("unreachable");

        await row.Locator("details.attempts summary").ClickAsync();

        await Expect(row.Locator("ol.attempt-list li")).ToHaveCountAsync(1);
        await Expect(row.Locator("ol.attempt-list li")).ToContainTextAsync("no stock row");
        await BrowserSession.ScreenshotAsync(_page, "dashboard-dead-letters.png");
        (await fixture.Service.HandledCountAsync(messageId)).ShouldBe(0);

        fixture.Service.FixCause();
        await row.Locator("button[data-action=replay]").ClickAsync();

        await Expect(row).ToHaveAttributeAsync("data-status", "replayed");
        await Expect(row.Locator("button[data-action=replay]")).ToHaveCountAsync(0);
        (await fixture.Service.HandledCountAsync(messageId)).ShouldBe(1);

        await row.Locator("td.correlation a.gid").ClickAsync();

        await Expect(_page.Locator("#tx-gid")).ToHaveTextAsync(gid);
        (await fixture.Service.HandledCountAsync(messageId)).ShouldBe(1); // still once
    }

    /// <summary>A service with a dead-letter endpoint, and a keyless coordinator (loopback: the page acts as an operator) that reads it and a source that is down.</summary>
    public sealed class ServiceFixture : DashboardFixture, IAsyncLifetime
    {
        public MessagingService Service { get; private set; } = null!;

        public override async Task InitializeAsync()
        {
            Service = await MessagingService.StartAsync();
            await base.InitializeAsync();
        }

        protected override Task<InProcessCoordinator> StartCoordinatorAsync() => InProcessCoordinator.StartAsync(
            prefix: "treaty-dashboard-dead-letters",
            configureOptions: options =>
            {
                options.CallbackSecret = MessagingService.Secret;
                options.DeadLetterSources.Add("inventory=" + Service.BaseAddress);
                options.DeadLetterSources.Add($"payment=http://127.0.0.1:{ClosedPort()}");
            });

        public new async Task DisposeAsync()
        {
            try
            {
                await base.DisposeAsync();
            }
            finally
            {
                if (Service is not null)
                {
                    await Service.DisposeAsync();
                }
            }
        }

        private static int ClosedPort()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
    }
}
