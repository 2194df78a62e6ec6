using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Treaty.Core.Security;
using Treaty.Server.DeadLetters;
using Treaty.Server.Tests.Security;
using Treaty.Server.Tests.Support;
using Treaty.Testing.DeadLetterSupport;

namespace Treaty.Server.Tests;

/// <summary>
/// The dead-letter view: a real service (Treaty.Messaging on SQLite over loopback) dead-letters a
/// poison message; the coordinator reads it through <c>--dead-letter-source</c>, shows it to
/// operators only, survives a source that is down, and replays it once, audited.
/// </summary>
public sealed class DeadLetterTests
{
    private const string DeadLetters = "/api/v1/dead-letters";
    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    private static void Keyed(TreatyServerOptions options, MessagingService service, params string[] more)
    {
        SecureServer.WithKeys(options);
        options.CallbackSecret = MessagingService.Secret;
        options.DeadLetterSources.Add("inventory=" + service.BaseAddress);
        foreach (var source in more)
        {
            options.DeadLetterSources.Add(source);
        }
    }

    private static async Task<DeadLetterListView> ListAsync(HttpClient http, string query = "")
    {
        using var response = await http.GetAsync(DeadLetters + query);
        var text = await response.Content.ReadAsStringAsync();
        response.StatusCode.ShouldBe(HttpStatusCode.OK, text);
        return JsonSerializer.Deserialize<DeadLetterListView>(text, Web).ShouldNotBeNull();
    }

    private static async Task<DeadLetterListView> WaitForAsync(HttpClient http, Func<DeadLetterListView, bool> condition, string what)
    {
        var deadline = DateTimeOffset.UtcNow.AddSeconds(30);
        while (true)
        {
            var list = await ListAsync(http);
            if (condition(list))
            {
                return list;
            }

            DateTimeOffset.UtcNow.ShouldBeLessThan(deadline, $"waited 30 s for {what}; last: {JsonSerializer.Serialize(list)}");
            await Task.Delay(100);
        }
    }

    private static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port; // closed again when the listener is disposed
    }

    [Fact]
    public async Task List_ShowsEveryAttempt_AndASourceThatIsDown_IsReportedWithoutBreakingTheView()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-1", "poison-1")).ShouldBeTrue(); // dead-lettered: acknowledged
        (await service.DeliverAsync("m-good-1", "good-1")).ShouldBeTrue();
        var down = $"http://127.0.0.1:{ClosedPort()}/";
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service, "payment=" + down));
        var http = server.Http(SecureServer.OperatorSecret);

        var list = await ListAsync(http);

        list.Sources.Select(s => (s.Name, s.Reachable, s.Count)).ShouldBe([("inventory", true, 1), ("payment", false, 0)]);
        list.Sources[1].Error.ShouldNotBeNullOrWhiteSpace();
        list.Sources[1].Url.ShouldBe(down);
        var letter = list.DeadLetters.ShouldHaveSingleItem();
        letter.Source.ShouldBe("inventory");
        letter.MessageId.ShouldBe("m-poison-1");
        letter.Type.ShouldBe(MessagingService.MessageType);
        letter.CorrelationId.ShouldBe("poison-1");
        letter.Consumer.ShouldBe("inventory");
        letter.Publisher.ShouldBe("order");
        letter.Status.ShouldBe("dead");
        letter.Error.ShouldContain("no stock row for order poison-1");
        letter.TransactionExists.ShouldBeFalse();
        var attempt = letter.Attempts.ShouldHaveSingleItem();
        attempt.Error.ShouldContain("no stock row");
        attempt.At.ShouldBeLessThanOrEqualTo(letter.DeadLetteredAt);

        (await ListAsync(http, "?source=payment")).DeadLetters.ShouldBeEmpty();
        (await ListAsync(http, "?status=replayed")).DeadLetters.ShouldBeEmpty();
        using var badQuery = await http.GetAsync(DeadLetters + "?source=nope&protocol=saga");
        var problem = await Api.ReadProblemAsync(badQuery, HttpStatusCode.BadRequest);
        problem.Errors.ShouldNotBeNull().Keys.ToList().ShouldBe(["source", "protocol"], ignoreOrder: true);
    }

    [Fact]
    public async Task List_LinksTheTransaction_WhenTheCoordinatorHasOneWithTheCorrelationId()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-linked", "poison-linked")).ShouldBeTrue();
        (await service.DeliverAsync("m-poison-alone", "poison-alone")).ShouldBeTrue();
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service));
        var http = server.Http(SecureServer.OperatorSecret);
        using (var reported = await Api.PostAsync(http, "/api/v1/choreography/events",
            """{ "messageId": "e-1", "type": "order.created", "service": "order", "correlationId": "poison-linked" }"""))
        {
            reported.IsSuccessStatusCode.ShouldBeTrue(await reported.Content.ReadAsStringAsync());
        }

        var list = await ListAsync(http);

        list.DeadLetters.Single(l => l.CorrelationId == "poison-linked").TransactionExists.ShouldBeTrue();
        list.DeadLetters.Single(l => l.CorrelationId == "poison-alone").TransactionExists.ShouldBeFalse();
    }

    [Fact]
    public async Task Endpoints_AreForOperatorsOnly_401WithoutKey_403ForAClientKey()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-2", "poison-2")).ShouldBeTrue();
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service));
        var letter = (await service.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem();
        var replay = $"{DeadLetters}/inventory/{letter.Id}/replay";

        foreach (var (http, status) in new[] { (server.Http(), HttpStatusCode.Unauthorized), (server.Http(SecureServer.ClientSecret), HttpStatusCode.Forbidden) })
        {
            using var list = await http.GetAsync(DeadLetters);
            await Api.ReadProblemAsync(list, status);
            using var replayed = await http.PostAsync(replay, null);
            await Api.ReadProblemAsync(replayed, status);
        }

        (await service.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem().Status.ShouldBe("dead"); // nothing replayed
    }

    [Fact]
    public async Task Replay_AfterTheCauseIsFixed_HandlesTheMessageOnce_AuditedAsTheKeyName_ASecondReplayIs409()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-3", "poison-3")).ShouldBeTrue();
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service));
        var http = server.Http("ops:" + SecureServer.OperatorSecret);
        var letter = (await ListAsync(http)).DeadLetters.ShouldHaveSingleItem();
        (await service.HandledCountAsync("m-poison-3")).ShouldBe(0);

        service.FixCause();
        using (var replayed = await http.PostAsync($"{DeadLetters}/inventory/{letter.Id}/replay", null))
        {
            var text = await replayed.Content.ReadAsStringAsync();
            replayed.StatusCode.ShouldBe(HttpStatusCode.OK, text);
            JsonSerializer.Deserialize<DeadLetterReplayView>(text, Web).ShouldBe(new DeadLetterReplayView("inventory", letter.Id, "replaying"));
        }

        var done = await WaitForAsync(http, l => l.DeadLetters.Single().Status == "replayed", "the replay to be handled");
        done.DeadLetters.Single().ReplayedAt.ShouldNotBeNull();
        done.DeadLetters.Single().Attempts.ShouldHaveSingleItem().Archived.ShouldBeTrue();
        (await service.HandledCountAsync("m-poison-3")).ShouldBe(1);
        server.Logs.Lines.ShouldContain(l => l.Id.Id == 3141 && l.Message.Contains("key:ops") && l.Message.Contains($"dead letter {letter.Id} of inventory") && l.Message.EndsWith("Replaying"));

        using (var again = await http.PostAsync($"{DeadLetters}/inventory/{letter.Id}/replay", null))
        {
            var problem = await Api.ReadProblemAsync(again, HttpStatusCode.Conflict);
            problem.Detail.ShouldNotBeNull().ShouldContain("replayed");
        }

        foreach (var path in new[] { $"{DeadLetters}/inventory/999999/replay", $"{DeadLetters}/inventory/abc/replay", $"{DeadLetters}/nowhere/{letter.Id}/replay", $"{DeadLetters}/inventory/-1/replay" })
        {
            using var missing = await http.PostAsync(path, null);
            await Api.ReadProblemAsync(missing, HttpStatusCode.NotFound);
        }

        await Task.Delay(300); // a second delivery, were there one, would come from the replay worker's next pass
        (await service.HandledCountAsync("m-poison-3")).ShouldBe(1);
    }

    [Fact]
    public async Task Replay_ManyOperatorsAtOnce_OneIsAccepted_TheOthersAre409_TheMessageIsHandledOnce()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-race", "poison-race")).ShouldBeTrue();
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service));
        var http = server.Http(SecureServer.OperatorSecret);
        var id = (await service.DeadLetters.ListAsync(CancellationToken.None)).Single().Id;
        service.FixCause();

        var answers = await Task.WhenAll(Enumerable.Range(0, 8).Select(async _ =>
        {
            using var response = await http.PostAsync($"{DeadLetters}/inventory/{id}/replay", null);
            return response.StatusCode;
        }));

        answers.Count(a => a == HttpStatusCode.OK).ShouldBe(1, string.Join(", ", answers));
        answers.Count(a => a == HttpStatusCode.Conflict).ShouldBe(7, string.Join(", ", answers));
        await WaitForAsync(http, l => l.DeadLetters.Single().Status == "replayed", "the replay to be handled");
        (await service.HandledCountAsync("m-poison-race")).ShouldBe(1);
    }

    [Fact]
    public async Task OpenApi_DescribesTheDeadLetterEndpoints_AndWithoutSourcesTheListIsEmpty()
    {
        await using var server = await SecureServer.StartAsync();
        var http = server.Http();
        using var document = JsonDocument.Parse(await http.GetStringAsync("/openapi/v1.json"));
        var paths = document.RootElement.GetProperty("paths");
        paths.GetProperty("/api/v1/dead-letters").TryGetProperty("get", out _).ShouldBeTrue();
        paths.GetProperty("/api/v1/dead-letters/{source}/{id}/replay").TryGetProperty("post", out _).ShouldBeTrue();

        var list = await ListAsync(http);

        list.Sources.ShouldBeEmpty();
        list.DeadLetters.ShouldBeEmpty();
    }

    [Fact]
    public async Task Replay_OfASourceThatIsDown_Is502ProblemJson_Audited()
    {
        await using var service = await MessagingService.StartAsync();
        await using var server = await SecureServer.StartAsync(o => Keyed(o, service, $"payment=http://127.0.0.1:{ClosedPort()}"));
        var http = server.Http(SecureServer.OperatorSecret);

        using var replayed = await http.PostAsync($"{DeadLetters}/payment/1/replay", null);

        var problem = await Api.ReadProblemAsync(replayed, HttpStatusCode.BadGateway);
        problem.Type.ShouldBe(DeadLettersApi.SourceUnavailable);
        problem.Detail.ShouldNotBeNull().ShouldContain("unreachable");
        server.Logs.Lines.ShouldContain(l => l.Id.Id == 3141 && l.Message.Contains("of payment") && l.Message.EndsWith("Unavailable"));
    }

    [Fact]
    public async Task Sources_AnsweringJunk_AreReportedAsErrors_TheViewStillAnswers200()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-6", "poison-6")).ShouldBeTrue();
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        Microsoft.AspNetCore.Hosting.HostingAbstractionsWebHostBuilderExtensions.UseUrls(builder.WebHost, "http://127.0.0.1:0");
        await using var junk = builder.Build();
        Microsoft.AspNetCore.Builder.EndpointRouteBuilderExtensions.MapGet(junk, "/empty/treaty/dead-letters", () => Microsoft.AspNetCore.Http.Results.Text("""{"deadLetters":[{}]}""", "application/json"));
        Microsoft.AspNetCore.Builder.EndpointRouteBuilderExtensions.MapGet(junk, "/text/treaty/dead-letters", () => Microsoft.AspNetCore.Http.Results.Text("<html>hello</html>", "text/html"));
        Microsoft.AspNetCore.Builder.EndpointRouteBuilderExtensions.MapGet(junk, "/slow/treaty/dead-letters", async (Microsoft.AspNetCore.Http.HttpContext http) =>
        {
            await Task.Delay(TimeSpan.FromSeconds(10), http.RequestAborted); // the coordinator gives up after 1 s
            return Microsoft.AspNetCore.Http.Results.Text("{}", "application/json");
        });
        await junk.StartAsync();
        var at = junk.Urls.Single();
        await using var server = await SecureServer.StartAsync(o =>
        {
            Keyed(o, service, $"empty={at}/empty/", $"text={at}/text", $"slow={at}/slow");
            o.DeadLetterSourceTimeout = TimeSpan.FromSeconds(1);
        });

        var list = await ListAsync(server.Http(SecureServer.OperatorSecret));

        list.DeadLetters.ShouldHaveSingleItem().MessageId.ShouldBe("m-poison-6");
        list.Sources.Select(s => (s.Name, s.Reachable)).ShouldBe([("inventory", true), ("empty", false), ("text", false), ("slow", false)]);
        list.Sources[1].Error.ShouldBe("answered something that is not a dead-letter list");
        list.Sources[2].Error.ShouldNotBeNullOrWhiteSpace();
        list.Sources[3].Error.ShouldBe("no answer within 1 s");
        await junk.StopAsync();
    }

    [Fact]
    public async Task Source_WithAnotherSecret_IsShownUnreachableWith401_NotTrusted()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-4", "poison-4")).ShouldBeTrue();
        await using var server = await SecureServer.StartAsync(o =>
        {
            Keyed(o, service);
            o.CallbackSecret = "another-secret-entirely-0123";
        });

        var list = await ListAsync(server.Http(SecureServer.OperatorSecret));

        list.DeadLetters.ShouldBeEmpty();
        var source = list.Sources.ShouldHaveSingleItem();
        source.Reachable.ShouldBeFalse();
        source.Error.ShouldNotBeNull().ShouldContain("401");
    }

    [Theory]
    [InlineData("http://10.1.2.3:5101", null, "not a loopback URL")]
    [InlineData("http://10.1.2.3:5101", "http://10.1.2.4:5101", "outside the participant allowlist")]
    [InlineData("http://10.1.2.3:5101/inventory/", "http://10.1.2.3:5101/payment", "outside the participant allowlist")]
    [InlineData("ftp://127.0.0.1:5101", null, "http(s) base URL")]
    public void Start_ASourceTheAllowlistRefuses_FailsWithAClearError(string url, string? allowed, string message)
    {
        var options = new TreatyServerOptions { CallbackSecret = MessagingService.Secret };
        options.DeadLetterSources.Add("inventory=" + url);
        if (allowed is not null)
        {
            options.AllowedParticipants.Add(allowed);
        }

        var error = Should.Throw<ArgumentException>(options.Validate);
        error.Message.ShouldContain("DeadLetterSources: 'inventory'");
        error.Message.ShouldContain(message);
    }

    [Fact]
    public void Start_SourcesWithoutACallbackSecret_OrNamedTwice_OrBadlyWritten_FailWithClearErrors()
    {
        var options = new TreatyServerOptions();
        options.DeadLetterSources.Add("inventory=http://127.0.0.1:5101");
        options.DeadLetterSources.Add("Inventory=http://127.0.0.1:5102");
        options.DeadLetterSources.Add("http://127.0.0.1:5103");

        var error = Should.Throw<ArgumentException>(options.Validate);

        error.Message.ShouldContain("DeadLetterSources need CallbackSecret");
        error.Message.ShouldContain("'Inventory' is given twice");
        error.Message.ShouldContain("must be NAME=URL");
        options.AllowedParticipants.Add("http://10.1.2.3:5101");
        options.DeadLetterSources.Clear();
        options.DeadLetterSources.Add("inventory=http://10.1.2.3:5101/");
        options.CallbackSecret = MessagingService.Secret;
        options.Validate(); // allowed once the allowlist names it
    }

    [Fact]
    public async Task ServiceEndpoints_RefuseUnsignedAndMisdirectedSignatures_AndAreNeverOpenWithoutASecret()
    {
        await using var service = await MessagingService.StartAsync();
        (await service.DeliverAsync("m-poison-5", "poison-5")).ShouldBeTrue();
        var id = (await service.DeadLetters.ListAsync(CancellationToken.None)).Single().Id;
        using var http = new HttpClient { BaseAddress = service.BaseAddress };
        var secret = Encoding.UTF8.GetBytes(MessagingService.Secret);
        string Sign(string method, string path, string body = "") =>
            CallbackSignature.Sign(secret, Encoding.UTF8.GetBytes($"{method} {path}\n{body}"), DateTimeOffset.UtcNow);

        async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, string? signature)
        {
            using var request = new HttpRequestMessage(method, path);
            if (signature is not null)
            {
                request.Headers.Add(CallbackSignature.HeaderName, signature);
            }

            return await http.SendAsync(request);
        }

        using (var unsigned = await SendAsync(HttpMethod.Get, "treaty/dead-letters", null))
        {
            unsigned.StatusCode.ShouldBe(HttpStatusCode.Unauthorized);
            unsigned.Content.Headers.ContentType?.MediaType.ShouldBe("application/problem+json");
        }

        // A valid signature of the list does not replay anything: the path is signed too.
        using (var misdirected = await SendAsync(HttpMethod.Post, $"treaty/dead-letters/{id}/replay", Sign("GET", "/treaty/dead-letters")))
        {
            misdirected.StatusCode.ShouldBe(HttpStatusCode.Unauthorized);
        }

        using (var list = await SendAsync(HttpMethod.Get, "treaty/dead-letters", Sign("GET", "/treaty/dead-letters")))
        {
            list.StatusCode.ShouldBe(HttpStatusCode.OK);
            (await list.Content.ReadAsStringAsync()).ShouldContain("m-poison-5");
        }

        using (var unknown = await SendAsync(HttpMethod.Post, "treaty/dead-letters/424242/replay", Sign("POST", "/treaty/dead-letters/424242/replay")))
        {
            unknown.StatusCode.ShouldBe(HttpStatusCode.NotFound);
            unknown.Content.Headers.ContentType?.MediaType.ShouldBe("application/problem+json");
        }

        (await service.DeadLetters.ListAsync(CancellationToken.None)).Single().Status.ShouldBe("dead");

        var error = await Should.ThrowAsync<InvalidOperationException>(async () => await MessagingService.StartAsync(secret: null));
        error.Message.ShouldContain("needs the coordinator's callback secret");
    }
}
