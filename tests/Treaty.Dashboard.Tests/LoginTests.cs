using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using Treaty.Dashboard.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Treaty.Dashboard.Tests;

/// <summary>
/// Signing in with the operator key. The coordinator here answers 401 to any API call without the
/// key, as a coordinator with <c>--operator-key</c> does; the page must then show its form, send the
/// key only as <c>Authorization: Bearer</c>, and never put it in a URL.
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

        protected override Task<InProcessCoordinator> StartCoordinatorAsync() => InProcessCoordinator.StartAsync(
            prefix: "treaty-dashboard-login",
            configure: builder => builder.Services.AddSingleton<IStartupFilter>(new RequireKey(this)));

        private sealed class RequireKey(KeyedFixture fixture) : IStartupFilter
        {
            public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
            {
                app.Use(async (context, call) =>
                {
                    fixture.RequestTargets.Add(context.Request.Path + context.Request.QueryString);
                    if (context.Request.Path.StartsWithSegments("/api"))
                    {
                        var authorization = context.Request.Headers.Authorization.ToString();
                        if (authorization != $"Bearer {OperatorKey}")
                        {
                            Interlocked.Increment(ref fixture._unauthorized);
                            context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                            context.Response.Headers.WWWAuthenticate = "Bearer";
                            await context.Response.WriteAsJsonAsync(new { type = "https://treaty.dev/problems/unauthorized", title = "Unauthorized", status = 401 });
                            return;
                        }

                        fixture.AuthorizedWith.Add(authorization);
                    }

                    await call(context);
                });
                next(app);
            };
        }
    }
}
