using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Treaty.Server.Security;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests.Security;

/// <summary>API keys: who may call what, the audited actor, rotation, and the keyless loopback mode.</summary>
public sealed class KeyAuthTests : IAsyncLifetime
{
    private SecureServer _server = null!;
    private Participant _participant = null!;

    public async Task InitializeAsync()
    {
        _participant = await Participant.StartAsync();
        _server = await SecureServer.StartAsync(SecureServer.WithKeys,
            map: app => app.MapGet("/unmarked", () => Results.Text("for operators")));
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        await _participant.DisposeAsync();
    }

    private string SagaBody(string gid) => Json.Saga(gid, Api.PayloadNode(),
        Json.Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate"))).ToJsonString();

    [Theory]
    [InlineData("GET", Api.Transactions)]
    [InlineData("GET", Api.Transactions + "/some-gid")]
    [InlineData("GET", Api.Transactions + "/some-gid/events")]
    [InlineData("GET", "/api/v1/transaction-counts")]
    [InlineData("GET", "/api/v1/instances")]
    [InlineData("POST", Api.Transactions)]
    [InlineData("POST", Api.Transactions + "/some-gid/submit")]
    [InlineData("POST", Api.Transactions + "/some-gid/retry")]
    [InlineData("POST", Api.Transactions + "/some-gid/abort")]
    [InlineData("GET", "/openapi/v1.json")]
    [InlineData("GET", "/unmarked")]
    public async Task NoKey_AnyEndpoint_Returns401ProblemWithBearerChallenge(string method, string path)
    {
        using var request = new HttpRequestMessage(new HttpMethod(method), path);
        using var response = await _server.Http().SendAsync(request);

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.Unauthorized);
        problem.Type.ShouldBe("https://treaty.dev/problems/unauthorized");
        response.Headers.WwwAuthenticate.ToString().ShouldStartWith("Bearer");
    }

    [Theory]
    [InlineData("Bearer not-a-configured-key-at-all")]
    [InlineData("Basic b3BzOm9wZXJhdG9yLXNlY3JldA==")]
    [InlineData("Bearer ")]
    public async Task WrongKey_Returns401_AndTheKeyIsNeverLogged(string authorization)
    {
        var http = _server.Http();
        http.DefaultRequestHeaders.TryAddWithoutValidation("Authorization", authorization);

        using var response = await http.GetAsync(Api.Transactions);

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.Unauthorized);
        problem.Type.ShouldBe("https://treaty.dev/problems/unauthorized");
        response.Headers.WwwAuthenticate.ToString().ShouldStartWith("Bearer");
        _server.Logs.Lines.ShouldNotContain(l => l.Message.Contains("not-a-configured-key") || l.Message.Contains("b3BzOm9w"));
    }

    [Fact]
    public async Task Secrets_NeverAppearInTheLog_KeyNamesDo()
    {
        using (await _server.Http("ops:" + SecureServer.OperatorSecret).GetAsync(Api.Transactions))
        {
        }

        _server.Logs.Lines.ShouldContain(l => l.Id.Id == 3013 && l.Message.Contains("ops") && l.Message.Contains("app"));
        _server.Logs.Lines.ShouldNotContain(l => l.Message.Contains(SecureServer.ClientSecret) || l.Message.Contains(SecureServer.OperatorSecret) || l.Message.Contains(SecureServer.NewOperatorSecret));
    }

    [Fact]
    public async Task ClientKey_SubmitsAndReads_ButRetryAndAbortAndUnmarkedEndpointsAre403()
    {
        var client = _server.Http(SecureServer.ClientSecret);
        var gid = Api.NewGid("keys");

        using (var submitted = await Api.PostAsync(client, Api.Transactions + "?wait=10s", SagaBody(gid)))
        {
            (await Api.ReadViewAsync(submitted)).Status.ShouldBe("committed");
        }

        (await Api.GetAsync(client, gid)).ShouldNotBeNull().Status.ShouldBe("committed");
        (await Api.EventsAsync(client, gid)).Events.ShouldNotBeEmpty();
        (await Api.ListAsync(client)).Items.ShouldContain(i => i.Gid == gid);
        using (var openApi = await client.GetAsync("/openapi/v1.json"))
        {
            openApi.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        foreach (var path in new[] { $"{Api.Transactions}/{gid}/retry", $"{Api.Transactions}/{gid}/abort" })
        {
            using var refused = await client.PostAsync(path, null);
            var problem = await Api.ReadProblemAsync(refused, HttpStatusCode.Forbidden);
            problem.Type.ShouldBe("https://treaty.dev/problems/forbidden");
            problem.Detail.ShouldNotBeNull().ShouldContain("key:app");
        }

        using var unmarked = await client.GetAsync("/unmarked");
        (await Api.ReadProblemAsync(unmarked, HttpStatusCode.Forbidden)).Type.ShouldBe("https://treaty.dev/problems/forbidden");
    }

    [Fact]
    public async Task OperatorKey_Aborts_AuditedAsTheKeyName_TheActorHeaderIgnored()
    {
        var gid = Api.NewGid("audit");
        _participant.Always($"{gid}/s1/action", 503);
        var body = Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate"),
                retry: new() { ["maxAttempts"] = 50, ["initialDelayMs"] = 60_000, ["maxDelayMs"] = 60_000 }));
        var operatorHttp = _server.Http("ops:" + SecureServer.OperatorSecret); // the NAME:SECRET form works as a bearer too
        operatorHttp.DefaultRequestHeaders.Add("Treaty-Actor", "somebody-else");
        using (var submitted = await Api.SubmitAsync(operatorHttp, body))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted);
        }

        await Api.WaitUntilAsync(operatorHttp, gid, v => v.Op("s1", "action").Attempts >= 1, "first attempt");
        using (var aborted = await Api.PostAsync(operatorHttp, $"{Api.Transactions}/{gid}/abort", "{\"reason\":\"customer left\"}"))
        {
            aborted.StatusCode.ShouldBe(HttpStatusCode.OK, await aborted.Content.ReadAsStringAsync());
        }

        await Api.WaitForStatusAsync(operatorHttp, gid, "aborted");
        var abort = (await Api.EventsAsync(operatorHttp, gid)).Events.Single(e => e.Kind == "operator-abort");
        abort.Detail.ShouldNotBeNull().ShouldContain("key:ops");
        abort.Detail.ShouldNotContain("somebody-else");
    }

    [Fact]
    public async Task Rotation_OldAndNewOperatorKeysBothWork_TheBareKeyIsNamedByItsHash()
    {
        var gid = Api.NewGid("rotate");
        using (var submitted = await Api.PostAsync(_server.Http(SecureServer.ClientSecret), Api.Transactions + "?wait=10s", SagaBody(gid)))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        foreach (var key in new[] { SecureServer.OperatorSecret, SecureServer.NewOperatorSecret })
        {
            // 409: authorized, and the transaction is already finished.
            using var retried = await _server.Http(key).PostAsync($"{Api.Transactions}/{gid}/retry", null);
            (await Api.ReadProblemAsync(retried, HttpStatusCode.Conflict)).Type.ShouldBe("https://treaty.dev/problems/invalid-state");
        }

        var expected = "operator-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(SecureServer.NewOperatorSecret)))[..8];
        _server.Get<ApiKeyRing>().Keys.Select(k => k.Name).ShouldBe(["app", "ops", expected]);
    }

    [Fact]
    public async Task Dashboard_PageLoadsWithoutAKey_ItsDataNeedsOne()
    {
        var anonymous = _server.Http();
        using (var page = await anonymous.GetAsync("/"))
        {
            page.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var counts = await anonymous.GetAsync("/api/v1/transaction-counts"))
        {
            (await Api.ReadProblemAsync(counts, HttpStatusCode.Unauthorized)).Type.ShouldBe("https://treaty.dev/problems/unauthorized");
        }

        using var keyed = await _server.Http("ops:" + SecureServer.OperatorSecret).GetAsync("/api/v1/transaction-counts");
        keyed.StatusCode.ShouldBe(HttpStatusCode.OK);
    }

    [Fact]
    public async Task HealthEndpoints_AreAnonymous()
    {
        var http = _server.Http();
        (await http.GetStringAsync("/healthz")).ShouldBe("ok");
        (await http.GetStringAsync("/readyz")).ShouldBe("ready");
    }

    [Fact]
    public void ShortSecret_BadName_DuplicateName_AreStartupErrors_ThatNameNoSecret()
    {
        var options = new TreatyServerOptions { DataDir = "./unused" };
        options.ApiKeys.Add("short-secret");
        options.ApiKeys.Add("bad name:" + SecureServer.ClientSecret);
        options.OperatorKeys.Add("twice:" + SecureServer.OperatorSecret);
        options.OperatorKeys.Add("twice:" + SecureServer.NewOperatorSecret);

        var error = Should.Throw<ArgumentException>(options.Validate).Message;

        error.ShouldContain("api-key #1: the secret must be at least 16 characters");
        error.ShouldContain("api-key #2: the name");
        error.ShouldContain("operator-key #2: the name 'twice' is used by another key");
        error.ShouldNotContain("short-secret");
        error.ShouldNotContain(SecureServer.ClientSecret);
    }

    [Theory]
    [InlineData("http://0.0.0.0:5080")]
    [InlineData("http://*:5080")]
    [InlineData("http://+:5080")]
    [InlineData("http://[::]:5080")]
    [InlineData("http://127.0.0.1:5080;http://192.168.1.10:5080")]
    [InlineData("http://coordinator.example:5080")]
    public void NoKeys_NonLoopbackUrls_RefuseToStart_WithKeysTheyStart(string urls)
    {
        var keyless = new TreatyServerOptions { Urls = urls, DataDir = "./unused" };
        Should.Throw<ArgumentException>(keyless.Validate).Message.ShouldContain("loopback only");
        Should.Throw<ArgumentException>(() => TreatyServer.CreateApp(keyless));

        var keyed = new TreatyServerOptions { Urls = urls, DataDir = "./unused" };
        keyed.OperatorKeys.Add(SecureServer.OperatorSecret);
        keyed.Validate();
    }

    [Theory]
    [InlineData("http://127.0.0.1:5080")]
    [InlineData("http://localhost:5080")]
    [InlineData("http://[::1]:5080")]
    [InlineData("https://127.0.0.5:1;http://localhost:2")]
    public void NoKeys_LoopbackUrls_Start(string urls) =>
        new TreatyServerOptions { Urls = urls, DataDir = "./unused" }.Validate();

    [Fact]
    public async Task NoKeys_EverythingIsAccepted_WithAWarning_AndTheActorIsTheAddress()
    {
        await using var open = await SecureServer.StartAsync();
        var http = open.Http();
        http.DefaultRequestHeaders.Add("Treaty-Actor", "somebody-else");
        var gid = Api.NewGid("open");
        using (var submitted = await Api.PostAsync(http, Api.Transactions + "?wait=10s", SagaBody(gid)))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var retried = await http.PostAsync($"{Api.Transactions}/{gid}/retry", null))
        {
            retried.StatusCode.ShouldBe(HttpStatusCode.Conflict); // authorized; finished already
        }

        open.Logs.Lines.ShouldContain(l => l.Id.Id == 3011 && l.Level == Microsoft.Extensions.Logging.LogLevel.Warning
            && l.Message == "No API keys configured; accepting unauthenticated requests on loopback only");
        TreatyAuthorization.ActorOf(new DefaultHttpContext { Connection = { RemoteIpAddress = IPAddress.Loopback } }).ShouldBe("anonymous@127.0.0.1");
    }

    [Fact]
    public void Match_FindsTheKeyByItsSecret_OrByNameAndSecret_NothingElse()
    {
        var options = new TreatyServerOptions();
        SecureServer.WithKeys(options);
        var ring = ApiKeyRing.From(options);

        ring.Match(SecureServer.ClientSecret).ShouldNotBeNull().Name.ShouldBe("app");
        ring.Match("app:" + SecureServer.ClientSecret).ShouldNotBeNull().Role.ShouldBe(KeyRole.Client);
        ring.Match("ops:" + SecureServer.ClientSecret).ShouldBeNull(); // a secret under another key's name
        ring.Match(SecureServer.ClientSecret[..^1]).ShouldBeNull();
        ring.Match("").ShouldBeNull();
        ring.Match(SecureServer.OperatorSecret).ShouldNotBeNull().Role.ShouldBe(KeyRole.Operator);
    }
}
