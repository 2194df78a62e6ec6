using System.Collections.Concurrent;
using System.Net;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Server.Security;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests.Security;

/// <summary>The allowlist at call time: no redirect is followed, DNS cannot point a call elsewhere,
/// and a URL the allowlist no longer covers is not called.</summary>
public sealed class ParticipantGuardTests : IAsyncLifetime
{
    private LocalServer _allowed = null!;
    private LocalServer _forbidden = null!;

    public async Task InitializeAsync()
    {
        _forbidden = await LocalServer.StartAsync(_ => Results.Ok());
        _allowed = await LocalServer.StartAsync(context => context.Request.Path.Value!.EndsWith("/undo", StringComparison.Ordinal)
            ? Results.Ok()
            : Results.Redirect($"{_forbidden.Base}/target", permanent: context.Request.Path.Value.Contains("308"), preserveMethod: true));
    }

    public async Task DisposeAsync()
    {
        await _allowed.DisposeAsync();
        await _forbidden.DisposeAsync();
    }

    private static JsonObject Once => Json.Retry(1, 10, 10);

    [Theory]
    [InlineData("307")]
    [InlineData("308")]
    public async Task RedirectToANonAllowedUrl_IsNotFollowed(string kind)
    {
        await using var server = await SecureServer.StartAsync(o => o.AllowedParticipants.Add(_allowed.Base + "/"));
        var http = server.Http();
        var gid = Api.NewGid("redirect");
        var body = Json.Saga(gid, Api.PayloadNode(), Json.Step("s", $"{_allowed.Base}/{kind}/{gid}", $"{_allowed.Base}/{gid}/undo", retry: Once));

        using (var submitted = await Api.SubmitAsync(http, body))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
        }

        var done = await Api.WaitForStatusAsync(http, gid, "aborted");
        done.Op("s", "action").LastStatusCode.ShouldBe(kind == "307" ? 307 : 308);
        _allowed.Calls.ShouldContain(p => p.Contains(gid, StringComparison.Ordinal));
        _forbidden.Calls.ShouldBeEmpty();
    }

    [Fact]
    public async Task Default_LocalhostResolvingToANonLoopbackAddress_IsNeverConnected()
    {
        var participant = await LocalServer.StartAsync(_ => Results.Ok());
        await using var _ = participant;
        var hostile = new ParticipantAllowlist([], (host, _) => Task.FromResult(new[] { IPAddress.Parse("10.255.0.1") }));
        await using var server = await SecureServer.StartAsync(build: b => b.Services.AddSingleton(hostile));
        var http = server.Http();
        var gid = Api.NewGid("dns");
        var port = new Uri(participant.Base).Port;
        var body = Json.Saga(gid, Api.PayloadNode(), Json.Step("s", $"http://localhost:{port}/{gid}/do", $"http://localhost:{port}/{gid}/undo", retry: Once));

        using (var submitted = await Api.SubmitAsync(http, body))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted); // localhost is a loopback name: accepted at submit
        }

        var seen = await Api.WaitUntilAsync(http, gid, v => v.Op("s", "action").Attempts >= 1 && v.Op("s", "action").LastError is not null, "a refused attempt");
        seen.Op("s", "action").LastError.ShouldNotBeNull().ShouldContain("resolves to no address the participant allowlist permits");
        participant.Calls.ShouldBeEmpty();
    }

    [Fact]
    public async Task ConnectCallback_DefaultAllowsLoopbackAnswers_RefusesOtherAddresses()
    {
        var port = new Uri(_forbidden.Base).Port;
        var loopback = new ParticipantAllowlist([], (_, _) => Task.FromResult(new[] { IPAddress.Parse("10.0.0.7"), IPAddress.Loopback }));
        using (var http = Client(loopback))
        using (var ok = await http.PostAsync($"http://localhost:{port}/one", null))
        {
            ok.StatusCode.ShouldBe(HttpStatusCode.OK); // only the loopback answer is used
        }

        var elsewhere = new ParticipantAllowlist([], (_, _) => Task.FromResult(new[] { IPAddress.Parse("192.168.7.7") }));
        using (var http = Client(elsewhere))
        {
            var error = await Should.ThrowAsync<HttpRequestException>(() => http.PostAsync($"http://localhost:{port}/two", null));
            error.Message.ShouldContain("allowlist");
        }

        _forbidden.Calls.ShouldBe(["/one"]);
    }

    [Fact]
    public async Task ConnectCallback_ExplicitHostPrefix_AllowsWhatThatNameResolvesTo_AndNoOtherName()
    {
        var port = new Uri(_forbidden.Base).Port;
        Task<IPAddress[]> Resolve(string host, CancellationToken _) => Task.FromResult(new[] { IPAddress.Loopback });
        var allowlist = new ParticipantAllowlist(ParticipantAllowlist.Parse([$"http://participant.test:{port}/"], null), Resolve);

        allowlist.IsAllowedAddress("participant.test", IPAddress.Loopback).ShouldBeTrue();
        allowlist.IsAllowedAddress("other.test", IPAddress.Loopback).ShouldBeFalse(); // loopback is not implied once prefixes are set
        allowlist.IsAllowedAddress("127.0.0.1", IPAddress.Loopback).ShouldBeFalse();
        using var http = Client(allowlist);
        using (var ok = await http.PostAsync($"http://participant.test:{port}/named", null))
        {
            ok.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        await Should.ThrowAsync<HttpRequestException>(() => http.PostAsync($"http://other.test:{port}/unnamed", null));
        _forbidden.Calls.ShouldBe(["/named"]);
    }

    [Fact]
    public void ExplicitIpPrefix_AllowsThatAddressOnly()
    {
        var allowlist = new ParticipantAllowlist(ParticipantAllowlist.Parse(["http://10.1.2.3:8080/", "http://[fd00::5]/"], null));

        allowlist.IsAllowedAddress("10.1.2.3", IPAddress.Parse("10.1.2.3")).ShouldBeTrue();
        allowlist.IsAllowedAddress("10.1.2.3", IPAddress.Parse("::ffff:10.1.2.3")).ShouldBeTrue();
        allowlist.IsAllowedAddress("fd00::5", IPAddress.Parse("fd00::5")).ShouldBeTrue();
        allowlist.IsAllowedAddress("10.1.2.4", IPAddress.Parse("10.1.2.4")).ShouldBeFalse();
        allowlist.IsAllowedAddress("localhost", IPAddress.Loopback).ShouldBeFalse();
    }

    [Fact]
    public async Task Invoker_UrlOutsideTheCurrentAllowlist_IsNotCalled()
    {
        // A transaction accepted under a wider allowlist, run after it was narrowed.
        var narrow = new ParticipantAllowlist(ParticipantAllowlist.Parse([_allowed.Base + "/only/"], null));
        using var invoker = new HttpBranchInvoker(new TreatyServerOptions(), TimeProvider.System, NullLogger<HttpBranchInvoker>.Instance, narrow);

        var outcome = await invoker.InvokeAsync(new BranchCall("g1", "s", "action", $"{_forbidden.Base}/target", 1, "{}", TimeSpan.FromSeconds(5)), CancellationToken.None);

        outcome.Kind.ShouldBe(OutcomeKind.Unknown);
        outcome.Error.ShouldNotBeNull().ShouldContain("outside the participant allowlist");
        _forbidden.Calls.ShouldBeEmpty();
    }

    private static HttpClient Client(ParticipantAllowlist allowlist) =>
        new(new SocketsHttpHandler { ConnectCallback = allowlist.ConnectAsync, UseProxy = false, AllowAutoRedirect = false });
}

/// <summary>A real HTTP server on 127.0.0.1 that records the paths it was called on.</summary>
internal sealed class LocalServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<string> _calls = new();

    private LocalServer(WebApplication app) => _app = app;

    public string Base { get; private set; } = "";

    public IReadOnlyCollection<string> Calls => _calls;

    public static async Task<LocalServer> StartAsync(Func<HttpContext, IResult> answer)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var server = new LocalServer(app);
        app.Run(async context =>
        {
            server._calls.Enqueue(context.Request.Path.Value ?? "");
            await answer(context).ExecuteAsync(context);
        });
        await app.StartAsync();
        server.Base = app.Urls.Single();
        return server;
    }

    public async ValueTask DisposeAsync() => await _app.DisposeAsync();
}
