using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>Submitting and reading transactions over real HTTP against a real coordinator and participant.</summary>
public sealed class SubmitTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Http;

    private JsonObject ThreeStepSaga(string gid, JsonNode? payload) => Json.Saga(gid, payload,
        Json.Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate")),
        Json.Step("s2", _participant.Url($"{gid}/s2/action"), _participant.Url($"{gid}/s2/compensate")),
        Json.Step("s3", _participant.Url($"{gid}/s3/action"), _participant.Url($"{gid}/s3/compensate")));

    [Fact]
    public async Task List_WithLimitOne_PagesThroughEveryTransactionWithTheCursor()
    {
        var gids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            var gid = Api.NewGid("page");
            gids.Add(gid);
            await fixture.Client.Saga(gid).WithPayload(Api.Payload).Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate")).SubmitAsync(TimeSpan.FromSeconds(10));
        }

        var first = await fixture.Client.ListAsync(new TransactionListQuery { Limit = 1 });
        first.Items.Count.ShouldBe(1);
        first.NextCursor.ShouldNotBeNullOrEmpty();

        var seen = new List<string>();
        await foreach (var item in fixture.Client.ListAllAsync(new TransactionListQuery { Limit = 1 }))
        {
            seen.Add(item.Gid);
        }

        seen.ShouldBeUnique();
        foreach (var gid in gids)
        {
            seen.ShouldContain(gid);
        }

        // Newest first: the three just submitted come in reverse order of submission.
        seen.Where(gids.Contains).ShouldBe(Enumerable.Reverse(gids));
    }

    [Fact]
    public async Task Submit_ThreeStepSagaWithWait_Returns200CommittedWithLocation()
    {
        var gid = Api.NewGid("commit");
        using var response = await Api.SubmitAsync(_http, ThreeStepSaga(gid, new JsonObject { ["order"] = 42 }), "?wait=10s");

        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        response.Headers.Location.ShouldNotBeNull().OriginalString.ShouldBe($"/api/v1/transactions/{gid}");
        var view = await Api.ReadViewAsync(response);
        view.Gid.ShouldBe(gid);
        view.Protocol.ShouldBe("saga");
        view.Status.ShouldBe("committed");
        view.Stuck.ShouldBeFalse();
        view.Payload.GetProperty("order").GetInt32().ShouldBe(42);
    }

    [Fact]
    public async Task Get_CommittedSaga_ShowsEveryBranchWithOneAttemptAndItsResult()
    {
        var gid = Api.NewGid("get");
        using (var submitted = await Api.SubmitAsync(_http, ThreeStepSaga(gid, new JsonObject { ["order"] = 7 }), "?wait=10s"))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        var view = (await Api.GetAsync(_http, gid)).ShouldNotBeNull();

        view.Status.ShouldBe("committed");
        view.Branches.Select(b => b.Name).ShouldBe(["s1", "s2", "s3"]);
        foreach (var branch in view.Branches)
        {
            branch.Status.ShouldBe("succeeded");
            var action = branch.Ops["action"];
            action.Url.ShouldBe(_participant.Url($"{gid}/{branch.Name}/action"));
            action.Status.ShouldBe("succeeded");
            action.Attempts.ShouldBe(1);
            action.LastStatusCode.ShouldBe(200);
            action.FirstAttemptAt.ShouldNotBeNull();
            action.FinishedAt.ShouldNotBeNull();
            var result = action.Result.ShouldNotBeNull();
            result.GetProperty("key").GetString().ShouldBe($"{gid}/{branch.Name}/action");
            result.GetProperty("applied").GetString().ShouldBe($"/{gid}/{branch.Name}/action");
            branch.Ops["compensate"].Attempts.ShouldBe(0);
            branch.Ops["compensate"].Status.ShouldBe("not-started");
        }

        view.Branch("s2").DependsOn.ShouldBe(["s1"]);
        view.Branch("s1").DependsOn.ShouldBeEmpty();
        _participant.CallsUnder($"{gid}/").Select(c => c.Path).ShouldBe([$"/{gid}/s1/action", $"/{gid}/s2/action", $"/{gid}/s3/action"]);
    }

    [Fact]
    public async Task Events_CommittedSaga_ShowSubmittedAttemptsPerBranchAndCommitted()
    {
        var gid = Api.NewGid("events");
        using (var submitted = await Api.SubmitAsync(_http, ThreeStepSaga(gid, Api.PayloadNode()), "?wait=10s"))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        var timeline = await Api.EventsAsync(_http, gid);

        timeline.Gid.ShouldBe(gid);
        var events = timeline.Events;
        events.Select(e => e.Sequence).ShouldBeInOrder(SortDirection.Ascending);
        events[0].Kind.ShouldBe("submitted");
        events[^1].Kind.ShouldBe("committed");
        events.Count(e => e.Kind == "committed").ShouldBe(1);
        foreach (var branch in new[] { "s1", "s2", "s3" })
        {
            var started = events.Single(e => e is { Kind: "attempt-started", Op: "action" } && e.Branch == branch);
            var succeeded = events.Single(e => e is { Kind: "attempt-succeeded", Op: "action" } && e.Branch == branch);
            started.Attempt.ShouldBe(1);
            succeeded.Attempt.ShouldBe(1);
            succeeded.StatusCode.ShouldBe(200);
            succeeded.Sequence.ShouldBeGreaterThan(started.Sequence);
        }

        // Sequential saga: s2 starts only after s1 succeeded.
        events.Single(e => e is { Kind: "attempt-started", Branch: "s2" }).Sequence
            .ShouldBeGreaterThan(events.Single(e => e is { Kind: "attempt-succeeded", Branch: "s1" }).Sequence);
        events.ShouldNotContain(e => e.Op == "compensate");
    }

    [Fact]
    public async Task List_AfterSubmit_IncludesTheTransaction()
    {
        var gid = Api.NewGid("list");
        using (var submitted = await Api.SubmitAsync(_http, ThreeStepSaga(gid, Api.PayloadNode()), "?wait=10s"))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        var all = await Api.ListAsync(_http);
        var item = all.Items.Single(i => i.Gid == gid);
        item.Status.ShouldBe("committed");
        item.Protocol.ShouldBe("saga");
        item.Branches.ShouldBe(3);

        (await Api.ListAsync(_http, "?status=committed&limit=500")).Items.ShouldContain(i => i.Gid == gid);
        (await Api.ListAsync(_http, "?status=aborted&limit=500")).Items.ShouldNotContain(i => i.Gid == gid);
    }

    [Fact]
    public async Task Submit_WithoutWait_Returns202ThenCommits()
    {
        var gid = Api.NewGid("nowait");
        var hold = _participant.Hold($"{gid}/s1/action");
        JsonObject body = ThreeStepSaga(gid, Api.PayloadNode());

        using (var response = await Api.SubmitAsync(_http, body))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.Accepted);
            response.Headers.Location.ShouldNotBeNull().OriginalString.ShouldBe($"/api/v1/transactions/{gid}");
            (await Api.ReadViewAsync(response)).Status.ShouldBeOneOf("pending", "running");
        }

        hold.Open();
        await Api.WaitForStatusAsync(_http, gid, "committed");
    }

    [Fact]
    public async Task Submit_SameGidSameBody_ReturnsTheSameTransactionWithoutRunningItAgain()
    {
        var gid = Api.NewGid("idem");
        var body = ThreeStepSaga(gid, new JsonObject { ["amount"] = 10 });
        TransactionView first;
        using (var response = await Api.SubmitAsync(_http, body, "?wait=10s"))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK);
            first = await Api.ReadViewAsync(response);
        }

        var callsBefore = _participant.CallsUnder($"{gid}/").Count;
        callsBefore.ShouldBe(3);

        using (var again = await Api.SubmitAsync(_http, body, "?wait=1s"))
        {
            again.StatusCode.ShouldBeOneOf(HttpStatusCode.OK, HttpStatusCode.Accepted);
            var second = await Api.ReadViewAsync(again);
            second.Gid.ShouldBe(gid);
            second.Status.ShouldBe("committed");
            second.CreatedAt.ShouldBe(first.CreatedAt);
        }

        // The same request sent through the SDK is the same transaction too.
        var viaClient = await fixture.Client.SubmitAsync(
            JsonSerializer.Deserialize(body.ToJsonString(), Core.Serialization.TreatyJsonContext.Default.SubmitTransactionRequest)!);
        viaClient.Gid.ShouldBe(gid);
        viaClient.CreatedAt.ShouldBe(first.CreatedAt);

        _participant.CallsUnder($"{gid}/").Count.ShouldBe(callsBefore);
        (await Api.ListAsync(_http)).Items.Count(i => i.Gid == gid).ShouldBe(1);
    }

    [Fact]
    public async Task Submit_SameGidDifferentBody_Returns409GidConflict()
    {
        var gid = Api.NewGid("conflict");
        using (var response = await Api.SubmitAsync(_http, ThreeStepSaga(gid, new JsonObject { ["amount"] = 10 }), "?wait=10s"))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var conflict = await Api.SubmitAsync(_http, ThreeStepSaga(gid, new JsonObject { ["amount"] = 11 })))
        {
            var problem = await Api.ReadProblemAsync(conflict, HttpStatusCode.Conflict);
            problem.Type.ShouldEndWith("gid-conflict");
            problem.Detail.ShouldNotBeNull().ShouldContain(gid);
        }

        // The SDK surfaces the same answer as a typed exception.
        var ex = await Should.ThrowAsync<TreatyApiException>(() => fixture.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("other", _participant.Url($"{gid}/other/action"), _participant.Url($"{gid}/other/compensate"))
            .SubmitAsync());
        ex.StatusCode.ShouldBe(409);
        ex.Type.ShouldBe(ProblemTypes.GidConflict);

        var stored = (await Api.GetAsync(_http, gid)).ShouldNotBeNull();
        stored.Payload.GetProperty("amount").GetInt32().ShouldBe(10);
        _participant.CallsUnder($"{gid}/").Count.ShouldBe(3);
    }

    [Fact]
    public async Task Submit_WithoutGid_GeneratesOne()
    {
        var marker = Api.NewGid("nogid");
        var body = Json.Saga(null, Api.PayloadNode(), Json.Step("only", _participant.Url($"{marker}/only/action"), _participant.Url($"{marker}/only/compensate")));
        using var response = await Api.SubmitAsync(_http, body, "?wait=10s");

        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        var view = await Api.ReadViewAsync(response);
        view.Gid.ShouldNotBeNullOrWhiteSpace();
        response.Headers.Location!.OriginalString.ShouldBe($"/api/v1/transactions/{view.Gid}");
        _participant.CallsTo($"{marker}/only/action").Single().Gid.ShouldBe(view.Gid);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Get_FinishedTransactionWithoutPayload_Returns200WithNullPayload(bool explicitNull)
    {
        var gid = Api.NewGid("nopayload");
        var body = Json.Saga(gid, null, Json.Step("s1", _participant.Url($"{gid}/s1/action"), _participant.Url($"{gid}/s1/compensate")));
        if (!explicitNull)
        {
            body.Remove("payload");
        }

        using (var submitted = await Api.SubmitAsync(_http, body, "?wait=10s"))
        {
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK, await submitted.Content.ReadAsStringAsync());
        }

        // Finished, so it is read back from the store rather than from memory.
        var view = (await Api.GetAsync(_http, gid)).ShouldNotBeNull();
        view.Status.ShouldBe("committed");
        view.Payload.ValueKind.ShouldBe(JsonValueKind.Null);
        (await Api.EventsAsync(_http, gid)).Events.ShouldNotBeEmpty();
        using var call = JsonDocument.Parse(_participant.CallsTo($"{gid}/s1/action").Single().Body);
        call.RootElement.GetProperty("payload").ValueKind.ShouldBe(JsonValueKind.Null);
    }

    [Fact]
    public async Task Get_UnknownGid_Returns404Problem()
    {
        using var response = await _http.GetAsync($"{Api.Transactions}/no-such-gid-{Guid.NewGuid():N}");
        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.NotFound);
        problem.Type.ShouldEndWith("not-found");

        using var events = await _http.GetAsync($"{Api.Transactions}/no-such-gid/events");
        (await Api.ReadProblemAsync(events, HttpStatusCode.NotFound)).Type.ShouldEndWith("not-found");

        (await fixture.Client.GetAsync("no-such-gid")).ShouldBeNull();
    }

    [Fact]
    public async Task Get_GidWithCharactersNoGidHas_Returns404Problem()
    {
        using var response = await _http.GetAsync($"{Api.Transactions}/{Uri.EscapeDataString("bad gid!")}");
        (await Api.ReadProblemAsync(response, HttpStatusCode.NotFound)).Type.ShouldEndWith("not-found");
    }

    [Theory]
    [InlineData("/api/v1/nope")]
    [InlineData("/nothing/here")]
    [InlineData("/api/v1/transactions/x/y/z")]
    public async Task UnknownRoute_Returns404Problem(string path)
    {
        using var response = await _http.GetAsync(path);
        (await Api.ReadProblemAsync(response, HttpStatusCode.NotFound)).Type.ShouldEndWith("not-found");
    }

    [Theory]
    [InlineData("?status=bogus", "status")]
    [InlineData("?status=COMMITTED", "status")]
    [InlineData("?limit=0", "limit")]
    [InlineData("?limit=501", "limit")]
    [InlineData("?limit=abc", "limit")]
    [InlineData("?limit=-1", "limit")]
    [InlineData("?protocol=foo", "protocol")]
    [InlineData("?stuck=maybe", "stuck")]
    [InlineData("?since=yesterday", "since")]
    [InlineData("?cursor=not-a-cursor", "cursor")]
    [InlineData("?cursor=YWJj", "cursor")]
    [InlineData("?cursor=eHx5", "cursor")]
    public async Task List_BadQuery_Returns400NamingTheField(string query, string field)
    {
        using var response = await _http.GetAsync(Api.Transactions + query);
        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest);
        problem.Type.ShouldEndWith("validation");
        problem.Errors.ShouldNotBeNull().Keys.ShouldContain(field);
    }

    [Fact]
    public async Task OpenApi_Document_DescribesTheTransactionsApi()
    {
        using var response = await _http.GetAsync("/openapi/v1.json");
        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        var text = await response.Content.ReadAsStringAsync();
        using var document = JsonDocument.Parse(text);
        document.RootElement.GetProperty("paths").TryGetProperty("/api/v1/transactions", out _).ShouldBeTrue(text);
        document.RootElement.GetProperty("paths").TryGetProperty("/api/v1/transactions/{gid}", out _).ShouldBeTrue();
    }

    [Fact]
    public async Task Health_Endpoints_Answer200()
    {
        using var health = await _http.GetAsync("/healthz");
        health.StatusCode.ShouldBe(HttpStatusCode.OK);
        using var ready = await _http.GetAsync("/readyz");
        ready.StatusCode.ShouldBe(HttpStatusCode.OK);
    }
}
