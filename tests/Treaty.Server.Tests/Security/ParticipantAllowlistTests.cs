using System.Net;
using System.Text.Json.Nodes;
using Treaty.Server.Security;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests.Security;

/// <summary>The participant allowlist at submit: a URL outside it is refused, named, never stored, never called.</summary>
public sealed class ParticipantAllowlistTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Http;

    private async Task RefusedAsync(HttpClient http, JsonObject body, string gid, params string[] fields)
    {
        using var response = await Api.SubmitAsync(http, body, "?wait=2s");

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest);
        problem.Type.ShouldBe("https://treaty.dev/problems/participant-not-allowed");
        problem.Errors.ShouldNotBeNull().Keys.Order(StringComparer.Ordinal).ShouldBe(fields.Order(StringComparer.Ordinal));
        (await Api.GetAsync(http, gid)).ShouldBeNull();
        (await Api.ListAsync(http)).Items.ShouldNotContain(i => i.Gid == gid);
        _participant.CallsUnder(gid).ShouldBeEmpty();
    }

    [Theory]
    [InlineData("http://10.0.0.1/pay")]
    [InlineData("http://169.254.169.254/latest/meta-data/")]
    [InlineData("https://example.com/pay")]
    [InlineData("http://0.0.0.0:80/")]
    [InlineData("http://127.0.0.1.nip.io/pay")]
    [InlineData("http://localhost.example.com/pay")]
    [InlineData("http://127.0.0.1@example.com/pay")]
    public async Task Default_NonLoopbackBranchUrl_Refused_NamingTheBranchAndField(string url)
    {
        var gid = Api.NewGid("allow");
        var body = Json.Saga(gid, Api.PayloadNode(),
            Json.Step("ok", _participant.Url($"{gid}/ok/action"), _participant.Url($"{gid}/ok/compensate")),
            Json.Step("evil", url, _participant.Url($"{gid}/evil/compensate")));

        await RefusedAsync(_http, body, gid, "branches[1].action");
    }

    [Fact]
    public async Task EveryOperationUrlIsChecked_CompensationsToo()
    {
        var gid = Api.NewGid("allow");
        var body = Json.Saga(gid, Api.PayloadNode(),
            Json.Step("a", _participant.Url($"{gid}/a/action"), "http://10.1.1.1/undo"),
            Json.Step("b", "http://10.1.1.2/do", "http://10.1.1.3/undo"));

        await RefusedAsync(_http, body, gid, "branches[0].compensate", "branches[1].action", "branches[1].compensate");
    }

    [Fact]
    public async Task Tcc_And_TwoPhaseCommit_OperationsAreChecked()
    {
        var gid = Api.NewGid("allow");
        var tcc = Json.Transaction("tcc", gid, [
            Json.Branch("pay", _participant.Url($"{gid}/pay"), ["try", "confirm", "cancel"]),
            Json.Branch("stock", "http://192.168.0.9/stock", ["try", "confirm", "cancel"]),
        ]);
        await RefusedAsync(_http, tcc, gid, "branches[1].try", "branches[1].confirm", "branches[1].cancel");

        var gid2 = Api.NewGid("allow");
        var twoPc = Json.Transaction("2pc", gid2, [Json.Branch("db", "http://[fd00::1]/db", ["prepare", "commit", "rollback"])]);
        await RefusedAsync(_http, twoPc, gid2, "branches[0].prepare", "branches[0].commit", "branches[0].rollback");
    }

    [Fact]
    public async Task Message_QueryPreparedOutside_Refused()
    {
        var gid = Api.NewGid("allow");
        var msg = Json.Transaction("msg", gid, [Json.Branch("notify", _participant.Url($"{gid}/notify"), ["action"])],
            new JsonObject { ["queryPrepared"] = "http://10.9.9.9/query" });

        await RefusedAsync(_http, msg, gid, "queryPrepared");
    }

    [Fact]
    public async Task Default_LoopbackNamesAndAddresses_AreAccepted()
    {
        var port = _participant.BaseAddress.Port;
        foreach (var host in new[] { "127.0.0.1", "localhost", "[::1]" })
        {
            var gid = Api.NewGid("loop");
            var body = Json.Saga(gid, Api.PayloadNode(), Json.Step("s", $"http://{host}:{port}/{gid}/s/action", $"http://{host}:{port}/{gid}/s/compensate"));
            using var response = await Api.SubmitAsync(_http, body);
            response.StatusCode.ShouldBeOneOf([HttpStatusCode.Accepted, HttpStatusCode.OK], await response.Content.ReadAsStringAsync());
        }
    }

    [Fact]
    public async Task ExplicitPrefixes_ReplaceTheDefault_AndMatchSchemeHostPortAndPathSegments()
    {
        var port = _participant.BaseAddress.Port;
        await using var server = await SecureServer.StartAsync(o => o.AllowedParticipants.Add($"http://127.0.0.1:{port}/shop"));
        var http = server.Http();

        var gid = Api.NewGid("prefix");
        var undo = $"http://127.0.0.1:{port}/shop/{gid}/undo";
        var body = Json.Saga(gid, Api.PayloadNode(),
            Json.Step("in", $"http://127.0.0.1:{port}/shop/{gid}/in/action", undo),
            Json.Step("sibling", $"http://127.0.0.1:{port}/shopping/{gid}/action", undo),
            Json.Step("otherPort", $"http://127.0.0.1:{port + 1}/shop/{gid}/action", undo),
            Json.Step("localhost", $"http://localhost:{port}/shop/{gid}/action", undo),
            Json.Step("dots", $"http://127.0.0.1:{port}/shop/../admin/{gid}", undo));

        await RefusedAsync(http, body, gid, "branches[1].action", "branches[2].action", "branches[3].action", "branches[4].action");
    }

    [Theory]
    [InlineData("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api", true)]
    [InlineData("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api/pay?x=1", true)]
    [InlineData("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api/pay", true)]
    [InlineData("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/apix", false)]
    [InlineData("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api/../admin", false)]
    [InlineData("http://127.0.0.1:8080/api", "https://127.0.0.1:8080/api/pay", false)]
    [InlineData("http://Payments.Internal/", "http://payments.internal/pay", true)]
    [InlineData("http://payments.internal/", "http://payments.internal:80/pay", true)]
    [InlineData("http://payments.internal/", "http://payments.internal:8080/pay", false)]
    [InlineData("http://payments.internal/", "http://payments.internal.evil.com/pay", false)]
    [InlineData("http://payments.internal/", "http://payments.internal@evil.com/pay", false)]
    [InlineData("http://payments.internal/", "http://evil.com@payments.internal/pay", false)]
    [InlineData("http://payments.internal/", "ftp://payments.internal/pay", false)]
    public void PrefixMatching(string prefix, string url, bool allowed) =>
        new ParticipantAllowlist(ParticipantAllowlist.Parse([prefix], null)).IsAllowed(url).ShouldBe(allowed);

    [Theory]
    [InlineData("http://127.0.0.1/x", true)]
    [InlineData("http://127.8.9.10/x", true)]
    [InlineData("https://localhost:1/x", true)]
    [InlineData("http://[::1]:2/x", true)]
    [InlineData("http://[::ffff:10.0.0.1]/x", false)]
    [InlineData("http://10.0.0.1/x", false)]
    [InlineData("http://localhost.localdomain/x", false)]
    [InlineData("file:///etc/passwd", false)]
    public void DefaultIsLoopbackOnly(string url, bool allowed) =>
        new ParticipantAllowlist([]).IsAllowed(url).ShouldBe(allowed);

    [Fact]
    public void AUrlCheckedAgain_GetsTheSameAnswerAndTheSameParsedUri_AlsoPastTheRememberedOnes()
    {
        var allowlist = new ParticipantAllowlist(ParticipantAllowlist.Parse(["http://payments.internal/pay"], null));

        allowlist.IsAllowed("http://payments.internal/pay/charge", out var first).ShouldBeTrue();
        allowlist.IsAllowed("http://payments.internal/pay/charge", out var again).ShouldBeTrue();
        again.ShouldBeSameAs(first);
        first!.AbsolutePath.ShouldBe("/pay/charge");
        allowlist.IsAllowed("http://payments.internal/other", out _).ShouldBeFalse();
        allowlist.IsAllowed("http://payments.internal/other", out _).ShouldBeFalse();
        allowlist.IsAllowed("not a url", out var none).ShouldBeFalse();
        none.ShouldBeNull();

        // Past the remembered URLs the answers are still computed, just not kept.
        for (var i = 0; i < ParticipantAllowlist.RememberedUrls; i++)
        {
            allowlist.IsAllowed($"http://payments.internal/pay/{i}");
        }

        allowlist.IsAllowed("http://payments.internal/pay/late", out var late).ShouldBeTrue();
        late!.AbsolutePath.ShouldBe("/pay/late");
        allowlist.IsAllowed("http://evil.example/pay/late").ShouldBeFalse();
    }

    [Theory]
    [InlineData("not a url")]
    [InlineData("ftp://host/")]
    [InlineData("http://user:pw@host/")]
    [InlineData("http://host/?q=1")]
    [InlineData("/relative")]
    public void BadPrefix_IsAStartupError(string prefix)
    {
        var options = new TreatyServerOptions();
        options.AllowedParticipants.Add(prefix);
        Should.Throw<ArgumentException>(options.Validate).Message.ShouldContain("AllowedParticipants");
    }
}
