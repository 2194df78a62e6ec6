using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using Treaty.Dashboard.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Treaty.Dashboard.Tests;

/// <summary>
/// Signing in with the operator key. The coordinator here has an <c>--operator-key</c> and answers
/// 401 to any API call without it; the page must then show its form, send the key only as
/// <c>Authorization: Bearer</c>, and never put it in a URL.
/// </summary>
public sealed class LoginTests(LoginTests.KeyedFixture fixture) : IClassFixture<LoginTests.KeyedFixture>, IAsyncLifetime
{
    private const string OperatorKey = "op-7f3c9a1e-secret-key";
    private IBrowserContext _context = null!;
    private IPage _page = null!;
    private List<string> _errors = null!;
    private readonly ConcurrentQueue<string> _urls = new();

    public async Task InitializeAsync()
    {
        SetDefaultExpectTimeout(20_000);
        (_context, _page, _errors) = await fixture.Browser.NewPageAsync(fixture.Coordinator.BaseAddress);
        _page.Request += (_, request) => _urls.Enqueue(request.Url);
    }

    public async Task DisposeAsync()
    {
        await _context.CloseAsync();
        _errors.ShouldBeEmpty();
    }

    [Fact]
    public async Task NoKey_ShowsTheForm_AndTheRightKeyLoadsTheListWithoutEverPuttingItInAUrl()
    {
        var gid = DashboardFixture.NewGid("login");
        await fixture.SubmitAsync("saga", gid, [fixture.Branch(gid, "only", ["action", "compensate"])], http: fixture.KeyedHttp);

        await _page.GotoAsync("/");

        await Expect(_page.Locator("#login-form")).ToBeVisibleAsync();
        await Expect(_page.Locator("#main")).ToBeHiddenAsync();
        fixture.Unauthorized.ShouldBeGreaterThan(0);

        await _page.FillAsync("#key", OperatorKey);
        await _page.ClickAsync("#login-form button[type=submit]");

        await Expect(_page.Locator($"#tx-rows tr[data-gid='{gid}']")).ToBeVisibleAsync();
        await Expect(_page.Locator("#login-form")).ToBeHiddenAsync();
        await Expect(_page.Locator("#logout")).ToBeVisibleAsync();
        // Kept for this tab only, sent as a header, and in no URL the browser asked for.
        (await _page.EvaluateAsync<string>("() => sessionStorage.getItem('treaty.operatorKey')")).ShouldBe(OperatorKey);
        (await _page.EvaluateAsync<int>("() => localStorage.length")).ShouldBe(0);
        fixture.AuthorizedWith.ShouldContain($"Bearer {OperatorKey}");
        _page.Url.ShouldNotContain(OperatorKey);
        _urls.ShouldNotBeEmpty();
        _urls.ShouldAllBe(url => !url.Contains(OperatorKey, StringComparison.Ordinal) && !url.Contains("key=", StringComparison.OrdinalIgnoreCase));
        fixture.RequestTargets.ShouldAllBe(target => !target.Contains(OperatorKey, StringComparison.Ordinal));

        // Still signed in after a reload of the tab; signed out on request.
        await _page.ReloadAsync();
        await Expect(_page.Locator($"#tx-rows tr[data-gid='{gid}']")).ToBeVisibleAsync();
        await _page.ClickAsync("#logout");
        await Expect(_page.Locator("#login-form")).ToBeVisibleAsync();
        (await _page.EvaluateAsync<string?>("() => sessionStorage.getItem('treaty.operatorKey')")).ShouldBeNull();
    }

    [Fact]
    public async Task WrongKey_KeepsTheFormAndSaysSo()
    {
        await _page.GotoAsync("/");
        await Expect(_page.Locator("#login-form")).ToBeVisibleAsync();

        await _page.FillAsync("#key", "not-the-key");
        await _page.ClickAsync("#login-form button[type=submit]");

        await Expect(_page.Locator("#login-error")).ToHaveTextAsync("The key was refused.");
        await Expect(_page.Locator("#login-form")).ToBeVisibleAsync();
        (await _page.EvaluateAsync<string?>("() => sessionStorage.getItem('treaty.operatorKey')")).ShouldBeNull();
        _urls.ShouldAllBe(url => !url.Contains("not-the-key", StringComparison.Ordinal));
    }

    [Fact]
    public async Task SignedInOperator_RetriesAStuckOneAndAbortsARunningOne_AndTheTimelineNamesTheKeyNotItsSecret()
    {
        var stuck = DashboardFixture.NewGid("keyretry");
        var confirm = $"{stuck}/stock/confirm";
        fixture.Participant.Fail(confirm, 503);
        var twice = new JsonObject { ["maxAttempts"] = 2, ["initialDelayMs"] = 20, ["maxDelayMs"] = 600_000 };
        await fixture.SubmitAsync("tcc", stuck,
        [
            fixture.Branch(stuck, "wallet", ["try", "confirm", "cancel"]),
            fixture.Branch(stuck, "stock", ["try", "confirm", "cancel"], retry: twice),
        ], wait: "0s", http: fixture.KeyedHttp);
        var running = DashboardFixture.NewGid("keyabort");
        fixture.Participant.Fail($"{running}/pay/action", 503);
        var slow = new JsonObject { ["maxAttempts"] = 50, ["initialDelayMs"] = 60_000, ["maxDelayMs"] = 60_000 };
        await fixture.SubmitAsync("saga", running,
        [
            fixture.Branch(running, "order", ["action", "compensate"]),
            fixture.Branch(running, "pay", ["action", "compensate"], retry: slow),
        ], wait: "0s", http: fixture.KeyedHttp);
        await fixture.WaitForAsync(stuck, tx => tx["stuck"]!.GetValue<bool>(), "stuck", fixture.KeyedHttp);
        await fixture.WaitForAsync(running, tx => tx["branches"]![1]!["ops"]!["action"]!["attempts"]!.GetValue<int>() >= 1, "tried once", fixture.KeyedHttp);

        await _page.GotoAsync("/");
        await _page.FillAsync("#key", OperatorKey);
        await _page.ClickAsync("#login-form button[type=submit]");
        await Expect(_page.Locator("#logout")).ToBeVisibleAsync();

        // Retry from the stuck view once the participant is back.
        await _page.GotoAsync("/#/stuck");
        var row = _page.Locator($"#stuck-rows tr[data-gid='{stuck}']");
        await Expect(row).ToContainTextAsync("stock.confirm");
        fixture.Participant.Heal(confirm);
        await row.Locator("button[data-action=retry]").ClickAsync();
        await Expect(row).ToHaveCountAsync(0);
        await fixture.WaitForAsync(stuck, tx => tx["status"]!.GetValue<string>() == "committed", "committed", fixture.KeyedHttp);
        await _page.GotoAsync($"/#/tx/{stuck}");
        await Expect(_page.Locator(".tx-header [data-status]")).ToHaveTextAsync("committed");
        // The actor is the key's name as the server authenticated it, not an address, not the secret.
        await Expect(_page.Locator("#timeline tr[data-kind=operator-retry]")).ToContainTextAsync("by key:dash");
        await AssertSecretNowhereAsync();

        // Abort the running saga from its own page (two clicks).
        await _page.GotoAsync($"/#/tx/{running}");
        await Expect(_page.Locator("#tx-gid")).ToHaveTextAsync(running);
        var abort = _page.Locator("#tx-actions button[data-action=abort]");
        await _page.FillAsync("#tx-actions .reason-input", "duplicate order");
        await abort.ClickAsync();
        await Expect(abort).ToHaveTextAsync("Confirm abort");
        await abort.ClickAsync();
        await Expect(_page.Locator(".tx-header [data-status]")).ToHaveTextAsync("aborted");
        await Expect(_page.Locator("#timeline tr[data-kind=operator-abort]")).ToContainTextAsync("aborted by operator key:dash: duplicate order");
        (await fixture.WaitForAsync(running, tx => tx["status"]!.GetValue<string>() == "aborted", "aborted", fixture.KeyedHttp))["reason"]!.GetValue<string>().ShouldContain("key:dash");
        await AssertSecretNowhereAsync();
        _urls.ShouldAllBe(url => !url.Contains(OperatorKey, StringComparison.Ordinal));
        fixture.RequestTargets.ShouldAllBe(target => !target.Contains(OperatorKey, StringComparison.Ordinal));
    }

    private async Task AssertSecretNowhereAsync()
    {
        _page.Url.ShouldNotContain(OperatorKey);
        (await _page.Locator("body").InnerTextAsync()).ShouldNotContain(OperatorKey);
        (await _page.ContentAsync()).ShouldNotContain(OperatorKey);
        (await _page.TitleAsync()).ShouldNotContain(OperatorKey);
    }

    /// <summary>A coordinator whose API wants <see cref="OperatorKey"/>; it records what it was sent.</summary>
    public sealed class KeyedFixture : DashboardFixture
    {
        private int _unauthorized;

        public ConcurrentBag<string> AuthorizedWith { get; } = [];

        public ConcurrentBag<string> RequestTargets { get; } = [];

        public int Unauthorized => Volatile.Read(ref _unauthorized);

        public HttpClient KeyedHttp { get; private set; } = null!;

        public override async Task InitializeAsync()
        {
            await base.InitializeAsync();
            KeyedHttp = new HttpClient { BaseAddress = Coordinator.BaseAddress };
            KeyedHttp.DefaultRequestHeaders.Authorization = new("Bearer", OperatorKey);
        }

        // A real coordinator with an operator key (named "dash"); the startup filter only watches.
        protected override Task<InProcessCoordinator> StartCoordinatorAsync() => InProcessCoordinator.StartAsync(
            prefix: "treaty-dashboard-login",
            configure: builder => builder.Services.AddSingleton<IStartupFilter>(new Watch(this)),
            configureOptions: options => options.OperatorKeys.Add("dash:" + OperatorKey));

        private sealed class Watch(KeyedFixture fixture) : IStartupFilter
        {
            public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
            {
                app.Use(async (context, call) =>
                {
                    fixture.RequestTargets.Add(context.Request.Path + context.Request.QueryString);
                    await call(context);
                    if (context.Request.Path.StartsWithSegments("/api"))
                    {
                        if (context.Response.StatusCode == StatusCodes.Status401Unauthorized)
                        {
                            Interlocked.Increment(ref fixture._unauthorized);
                        }
                        else
                        {
                            fixture.AuthorizedWith.Add(context.Request.Headers.Authorization.ToString());
                        }
                    }
                });
                next(app);
            };
        }
    }
}
