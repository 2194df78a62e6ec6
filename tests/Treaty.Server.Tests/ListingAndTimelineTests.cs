using System.Net;
using System.Net.Http.Json;
using Treaty.Core.Contracts;
using Treaty.Core.Model;
using Treaty.Core.Serialization;
using Treaty.Server.Tests.Support;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>What the dashboard reads: the listing's time range and gid search, the counts by status,
/// and the timeline's latency and participant answers.</summary>
public sealed class ListingAndTimelineTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private const string Counts = "/api/v1/transaction-counts";
    private readonly HttpClient _http = fixture.Http;

    [Fact]
    public async Task List_GidSearch_ReturnsOnlyGidsContainingTheText()
    {
        var tag = Api.NewGid("find");
        var mine = new[] { $"{tag}-a", $"{tag}-b" };
        foreach (var gid in mine.Append(Api.NewGid("other")))
        {
            await SubmitAsync(gid);
        }

        var found = await Api.ListAsync(_http, $"?gid={Uri.EscapeDataString(tag)}");

        found.Items.Select(i => i.Gid).Order(StringComparer.Ordinal).ShouldBe(mine);
    }

    [Fact]
    public async Task List_SinceAndUntil_ReturnTheTransactionsCreatedInBetween()
    {
        var tag = Api.NewGid("range");
        await SubmitAsync($"{tag}-early");
        var early = (await Api.GetAsync(_http, $"{tag}-early"))!.CreatedAt;
        await Task.Delay(20);
        await SubmitAsync($"{tag}-late");
        var late = (await Api.GetAsync(_http, $"{tag}-late"))!.CreatedAt;
        late.ShouldBeGreaterThan(early);

        string Query(DateTimeOffset? since, DateTimeOffset? until) =>
            $"?gid={tag}" + (since is { } s ? $"&since={Uri.EscapeDataString(s.ToString("O"))}" : "") + (until is { } u ? $"&until={Uri.EscapeDataString(u.ToString("O"))}" : "");

        (await Api.ListAsync(_http, Query(null, late))).Items.Select(i => i.Gid).ShouldBe([$"{tag}-early"]);
        (await Api.ListAsync(_http, Query(late, null))).Items.Select(i => i.Gid).ShouldBe([$"{tag}-late"]);
        (await Api.ListAsync(_http, Query(early, late.AddTicks(1)))).Items.Count.ShouldBe(2);
        (await Api.ListAsync(_http, Query(early, early))).Items.ShouldBeEmpty();
    }

    [Theory]
    [InlineData("?until=tomorrow", "until")]
    [InlineData("?until=", "until")]
    [InlineData("?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z", "until")]
    [InlineData("?gid=bad%20gid", "gid")]
    [InlineData("?gid=%3Cscript%3E", "gid")]
    public async Task List_BadRangeOrSearch_Returns400NamingTheField(string query, string field)
    {
        using var response = await _http.GetAsync(Api.Transactions + query);

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest);
        problem.Type.ShouldEndWith("validation");
        problem.Errors.ShouldNotBeNull().Keys.ShouldBe([field]);
    }

    [Fact]
    public async Task List_GidSearchLongerThanAGid_Returns400()
    {
        using var response = await _http.GetAsync(Api.Transactions + "?gid=" + new string('a', TreatyDefaults.MaxGidLength + 1));

        (await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest)).Errors.ShouldNotBeNull().Keys.ShouldBe(["gid"]);
    }

    [Fact]
    public async Task Counts_ByStatus_MatchTheListingAndFollowNewTransactions()
    {
        var tag = Api.NewGid("count");
        await SubmitAsync($"{tag}-ok", wait: true);
        fixture.Participant.Always($"/{tag}-no/s1/action", 409);
        await SubmitAsync($"{tag}-no", wait: true);

        var counts = await CountsAsync($"?gid={tag}");

        counts.ByStatus.Keys.ShouldBe(["prepared", "pending", "running", "aborting", "committed", "aborted"], ignoreOrder: true);
        counts.ByStatus["committed"].ShouldBe(1);
        counts.ByStatus["aborted"].ShouldBe(1);
        counts.Total.ShouldBe(2);
        counts.Stuck.ShouldBe(0);
        (await CountsAsync($"?gid={tag}&protocol=tcc")).Total.ShouldBe(0);

        await SubmitAsync($"{tag}-ok2", wait: true);
        (await CountsAsync($"?gid={tag}")).ByStatus["committed"].ShouldBe(2);
        var all = await CountsAsync("");
        all.Total.ShouldBe((await Api.ListAsync(_http)).Items.Count);
    }

    [Theory]
    [InlineData("?status=committed", "status")]
    [InlineData("?protocol=xa", "protocol")]
    [InlineData("?stuck=yes", "stuck")]
    [InlineData("?since=noon", "since")]
    [InlineData("?until=noon", "until")]
    [InlineData("?gid=a/b", "gid")]
    public async Task Counts_BadQuery_Returns400NamingTheField(string query, string field)
    {
        using var response = await _http.GetAsync(Counts + query);

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest);
        problem.Errors.ShouldNotBeNull().Keys.ShouldBe([field]);
    }

    [Fact]
    public async Task Counts_AreInTheOpenApiDocumentBesideTheListing()
    {
        var text = await _http.GetStringAsync("/openapi/v1.json");

        text.ShouldContain("\"/api/v1/transaction-counts\"");
        text.ShouldContain("CountTransactions");
    }

    [Fact]
    public async Task Events_AnsweredAttempts_CarryLatencyAndTheClippedAnswer()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.TimelineBodyBytes = 24);
        var gid = Api.NewGid("body");
        fixture.Participant.Script($"/{gid}/s1/action", [new Reply(503), new Reply(200, TimeSpan.FromMilliseconds(120))]);
        using var response = await Api.SubmitAsync(coordinator.Http,
            Json.Saga(gid, Api.PayloadNode(), Json.Step("s1", fixture.Participant.Url($"{gid}/s1/action"), fixture.Participant.Url($"{gid}/s1/compensate"), retry: Json.Retry(3, 10, 10))), "?wait=20s");
        (await Api.ReadViewAsync(response)).Status.ShouldBe("committed");

        var events = (await Api.EventsAsync(coordinator.Http, gid)).Events;

        var failed = events.Single(e => e.Kind == JournalKinds.AttemptUnknown);
        failed.StatusCode.ShouldBe(503);
        failed.DurationMs.ShouldNotBeNull().ShouldBeGreaterThanOrEqualTo(0);
        failed.Body.ShouldBe("{\"detail\":\"scripted 503 " + BodyClip.Marker);
        var succeeded = events.Single(e => e.Kind == JournalKinds.AttemptSucceeded);
        succeeded.DurationMs.ShouldNotBeNull().ShouldBeGreaterThanOrEqualTo(100);
        succeeded.Body.ShouldNotBeNull().ShouldStartWith("{\"applied\":");
        System.Text.Encoding.UTF8.GetByteCount(succeeded.Body[..^BodyClip.Marker.Length]).ShouldBeLessThanOrEqualTo(24);
        events.Where(e => e.Kind == JournalKinds.AttemptStarted).ShouldAllBe(e => e.DurationMs == null && e.Body == null);
    }

    [Fact]
    public async Task Events_TimelineBodyBytesZero_KeepsLatencyButNoAnswer()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.TimelineBodyBytes = 0);
        var gid = Api.NewGid("nobody");
        using var response = await Api.SubmitAsync(coordinator.Http,
            Json.Saga(gid, Api.PayloadNode(), Json.Step("s1", fixture.Participant.Url($"{gid}/s1/action"), fixture.Participant.Url($"{gid}/s1/compensate"))), "?wait=20s");
        (await Api.ReadViewAsync(response)).Status.ShouldBe("committed");

        var succeeded = (await Api.EventsAsync(coordinator.Http, gid)).Events.Single(e => e.Kind == JournalKinds.AttemptSucceeded);

        succeeded.Body.ShouldBeNull();
        succeeded.DurationMs.ShouldNotBeNull();
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(TreatyServerDefaults.MaxTimelineBodyBytes + 1)]
    public void Options_TimelineBodyBytesOutOfRange_AreRefusedAtStart(int bytes)
    {
        var options = new TreatyServerOptions { TimelineBodyBytes = bytes };

        Should.Throw<ArgumentException>(options.Validate).Message.ShouldContain("TimelineBodyBytes");
    }

    [Theory]
    [InlineData("70000")]
    [InlineData("-1")]
    public async Task Serve_TimelineBodyBytesOutOfRange_ExitsWith2BeforeListening(string value)
    {
        var serve = Treaty.Cli.ServeCommand.Create();
        var error = new StringWriter();
        var previous = Console.Error;
        int exit;
        Console.SetError(error);
        try
        {
            exit = await serve.Parse(["--timeline-body-bytes", value, "--urls", "http://127.0.0.1:1"]).InvokeAsync();
        }
        finally
        {
            Console.SetError(previous);
        }

        exit.ShouldBe(2);
        error.ToString().ShouldContain("TimelineBodyBytes must be between 0 and 65536");
    }

    [Theory]
    [InlineData("", null)]
    [InlineData("short", "short")]
    [InlineData("ééé", "é" + BodyClip.Marker)]
    [InlineData("a😀b", "a" + BodyClip.Marker)]
    public void BodyClip_CutsAtACharacterBoundaryWithinTheBytes(string text, string? expected)
    {
        BodyClip.Clip(text, text == "short" ? 5 : 3).ShouldBe(expected);
    }

    private async Task SubmitAsync(string gid, bool wait = false)
    {
        using var response = await Api.SubmitAsync(_http,
            Json.Saga(gid, Api.PayloadNode(), Json.Step("s1", fixture.Participant.Url($"{gid}/s1/action"), fixture.Participant.Url($"{gid}/s1/compensate"))), wait ? "?wait=20s" : "");
        response.StatusCode.ShouldBeOneOf([HttpStatusCode.OK, HttpStatusCode.Accepted], response.ToString() + await response.Content.ReadAsStringAsync());
    }

    private async Task<TransactionCountsView> CountsAsync(string query)
    {
        using var response = await _http.GetAsync(Counts + query);
        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        return (await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.TransactionCountsView)).ShouldNotBeNull();
    }
}
