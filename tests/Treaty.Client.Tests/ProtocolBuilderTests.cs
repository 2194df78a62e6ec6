using System.Text.Json;
using System.Text.Json.Nodes;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.Client.Tests;

/// <summary>What the TCC, 2PC, 3PC and message builders send, without a coordinator: the exact JSON of the contract.</summary>
public sealed class ProtocolBuilderTests
{
    private static readonly RetrySettings FastRetry = new(3, TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1));

    /// <summary>The request as the client puts it on the wire.</summary>
    private static JsonNode Wire(SubmitTransactionRequest request) =>
        JsonSerializer.SerializeToNode(request, TreatyJsonContext.Default.SubmitTransactionRequest)!;

    private static void ShouldBeJson(SubmitTransactionRequest request, string expected)
    {
        var actual = Wire(request);
        JsonNode.DeepEquals(actual, JsonNode.Parse(expected)).ShouldBeTrue($"sent {actual.ToJsonString()}");
    }

    [Fact]
    public void Tcc_Build_IsExactlyTheContractJson()
    {
        using var payload = JsonDocument.Parse("""{"orderId":"o-1"}""");
        var request = new TccBuilder("t-1")
            .WithPayload(payload.RootElement)
            .Branch("wallet", "http://w/try", "http://w/confirm", "http://w/cancel", timeout: TimeSpan.FromSeconds(2), retry: FastRetry)
            .Branch("stock", new Uri("http://s:81/try"), new Uri("http://s:81/confirm"), new Uri("http://s:81/cancel"))
            .WithTimeout(TimeSpan.FromSeconds(30))
            .WithRetry(4, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(10))
            .Build();

        ShouldBeJson(request, """
            {"gid":"t-1","protocol":"tcc","payload":{"orderId":"o-1"},
             "branches":[
               {"name":"wallet","try":"http://w/try","confirm":"http://w/confirm","cancel":"http://w/cancel",
                "timeoutMs":2000,"retry":{"maxAttempts":3,"initialDelayMs":100,"maxDelayMs":1000}},
               {"name":"stock","try":"http://s:81/try","confirm":"http://s:81/confirm","cancel":"http://s:81/cancel"}],
             "timeoutMs":30000,"retry":{"maxAttempts":4,"initialDelayMs":200,"maxDelayMs":10000}}
            """);
    }

    [Fact]
    public void TwoPhaseCommit_Build_IsExactlyTheContractJson()
    {
        var request = new TwoPhaseCommitBuilder("p-1")
            .Branch("debit", "http://a/prepare", "http://a/commit", "http://a/rollback")
            .Branch("credit", new Uri("http://b/prepare"), new Uri("http://b/commit"), new Uri("http://b/rollback"), timeout: TimeSpan.FromMilliseconds(750))
            .Build();

        ShouldBeJson(request, """
            {"gid":"p-1","protocol":"2pc","branches":[
               {"name":"debit","prepare":"http://a/prepare","commit":"http://a/commit","rollback":"http://a/rollback"},
               {"name":"credit","prepare":"http://b/prepare","commit":"http://b/commit","rollback":"http://b/rollback","timeoutMs":750}]}
            """);
    }

    [Fact]
    public void ThreePhaseCommit_Build_IsExactlyTheContractJson()
    {
        var request = new ThreePhaseCommitBuilder("q-1")
            .Branch("debit", "http://a/can", "http://a/pre", "http://a/do", "http://a/abort", retry: FastRetry)
            .Branch("credit", new Uri("http://b/can"), new Uri("http://b/pre"), new Uri("http://b/do"), new Uri("http://b/abort"))
            .Build();

        ShouldBeJson(request, """
            {"gid":"q-1","protocol":"3pc","branches":[
               {"name":"debit","canCommit":"http://a/can","preCommit":"http://a/pre","doCommit":"http://a/do","abort":"http://a/abort",
                "retry":{"maxAttempts":3,"initialDelayMs":100,"maxDelayMs":1000}},
               {"name":"credit","canCommit":"http://b/can","preCommit":"http://b/pre","doCommit":"http://b/do","abort":"http://b/abort"}]}
            """);
    }

    [Fact]
    public void Message_Build_IsExactlyTheContractJsonWithQueryPreparedAndDependsOnAsGiven()
    {
        var request = new MessageBuilder("m-1")
            .WithQueryPrepared("http://sender/query-prepared")
            .Branch("billing", "http://billing/placed")
            .Branch("shipping", new Uri("http://shipping/placed"), dependsOn: [])
            .Branch("audit", "http://audit/placed", dependsOn: ["billing", "shipping"], timeout: TimeSpan.FromSeconds(1))
            .WithTimeout(TimeSpan.FromMilliseconds(300))
            .Build();

        // dependsOn absent stays absent (the coordinator's default for a message: delivered at once).
        ShouldBeJson(request, """
            {"gid":"m-1","protocol":"msg","queryPrepared":"http://sender/query-prepared",
             "branches":[
               {"name":"billing","action":"http://billing/placed"},
               {"name":"shipping","action":"http://shipping/placed","dependsOn":[]},
               {"name":"audit","action":"http://audit/placed","dependsOn":["billing","shipping"],"timeoutMs":1000}],
             "timeoutMs":300}
            """);
    }

    [Fact]
    public void Message_WithQueryPreparedUri_SendsTheAbsoluteUri()
    {
        var request = new MessageBuilder("m").WithQueryPrepared(new Uri("http://sender:8080/q")).Branch("a", "http://p/a").Build();

        request.QueryPrepared.ShouldBe("http://sender:8080/q");
    }

    [Fact]
    public void Message_WithoutQueryPrepared_LeavesTheRuleToTheCoordinator()
    {
        new MessageBuilder("m").Branch("a", "http://p/a").Build().QueryPrepared.ShouldBeNull();
    }

    [Fact]
    public void Builders_WithoutGid_LeaveGidToTheCoordinator()
    {
        new TccBuilder().Branch("a", "http://p/t", "http://p/c", "http://p/x").Build().Gid.ShouldBeNull();
        new TwoPhaseCommitBuilder().Branch("a", "http://p/p", "http://p/c", "http://p/r").Build().Gid.ShouldBeNull();
        new ThreePhaseCommitBuilder().Branch("a", "http://p/1", "http://p/2", "http://p/3", "http://p/4").Build().Gid.ShouldBeNull();
        new MessageBuilder().Branch("a", "http://p/a").Build().Gid.ShouldBeNull();
    }

    [Fact]
    public void Tcc_BuildCalledTwice_ReturnsIndependentRequests()
    {
        var builder = new TccBuilder("g").Branch("a", "http://p/t", "http://p/c", "http://p/x", retry: FastRetry);
        var first = builder.Build();
        first.Branches![0]!.Try = "http://changed";
        first.Branches[0]!.Retry!.MaxAttempts = 99;

        var second = builder.Build();

        second.Branches![0]!.Try.ShouldBe("http://p/t");
        second.Branches[0]!.Retry!.MaxAttempts.ShouldBe(3);
    }

    [Fact]
    public void Message_BuildCalledTwice_CopiesDependsOn()
    {
        var builder = new MessageBuilder("g").Branch("a", "http://p/a").Branch("b", "http://p/b", dependsOn: ["a"]);
        builder.Build().Branches![1]!.DependsOn!.Add("x");

        builder.Build().Branches![1]!.DependsOn.ShouldBe(["a"]);
    }

    [Fact]
    public void Builders_WithoutBranches_ThrowNamingTheProtocol()
    {
        Should.Throw<InvalidOperationException>(() => new TccBuilder("g").Build()).Message.ShouldContain("TCC");
        Should.Throw<InvalidOperationException>(() => new TwoPhaseCommitBuilder("g").Build()).Message.ShouldContain("two-phase commit");
        Should.Throw<InvalidOperationException>(() => new ThreePhaseCommitBuilder("g").Build()).Message.ShouldContain("three-phase commit");
        Should.Throw<InvalidOperationException>(() => new MessageBuilder("g").Build()).Message.ShouldContain("message");
    }

    [Fact]
    public void Builders_WithoutClient_SubmitAsyncThrowsNamingTheFactory()
    {
        Should.Throw<InvalidOperationException>(() => new TccBuilder("g").Branch("a", "http://p/t", "http://p/c", "http://p/x").SubmitAsync())
            .Message.ShouldContain("TreatyClient.Tcc(");
        Should.Throw<InvalidOperationException>(() => new TwoPhaseCommitBuilder("g").Branch("a", "http://p/p", "http://p/c", "http://p/r").SubmitAsync())
            .Message.ShouldContain("TreatyClient.TwoPhaseCommit(");
        Should.Throw<InvalidOperationException>(() => new ThreePhaseCommitBuilder("g").Branch("a", "http://1", "http://2", "http://3", "http://4").SubmitAsync())
            .Message.ShouldContain("TreatyClient.ThreePhaseCommit(");
        Should.Throw<InvalidOperationException>(() => new MessageBuilder("g").Branch("a", "http://p/a").SubmitAsync())
            .Message.ShouldContain("TreatyClient.Message(");
    }

    [Fact]
    public async Task Message_ExecuteAsyncWithoutClient_ThrowsBeforeTouchingTheConnection()
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection("Data Source=:memory:");

        await Should.ThrowAsync<InvalidOperationException>(() => new MessageBuilder("g")
            .WithQueryPrepared("http://s/q").Branch("a", "http://p/a")
            .ExecuteAsync(connection, (_, _) => Task.CompletedTask));
        connection.State.ShouldBe(System.Data.ConnectionState.Closed);
    }

    [Fact]
    public void Branch_DuplicateName_ThrowsNamingNameAndKeepsTheFirst()
    {
        var tcc = new TccBuilder("g").Branch("a", "http://p/t", "http://p/c", "http://p/x");
        var ex = Should.Throw<ArgumentException>(() => tcc.Branch("a", "http://q/t", "http://q/c", "http://q/x"));
        ex.ParamName.ShouldBe("name");
        ex.Message.ShouldContain("'a'");
        tcc.Build().Branches!.Single()!.Try.ShouldBe("http://p/t");

        Should.Throw<ArgumentException>(() => new TwoPhaseCommitBuilder("g").Branch("a", "http://1", "http://2", "http://3").Branch("a", "http://1", "http://2", "http://3"))
            .ParamName.ShouldBe("name");
        Should.Throw<ArgumentException>(() => new ThreePhaseCommitBuilder("g").Branch("a", "http://1", "http://2", "http://3", "http://4").Branch("a", "http://1", "http://2", "http://3", "http://4"))
            .ParamName.ShouldBe("name");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").Branch("a", "http://1").Branch("a", "http://2"))
            .ParamName.ShouldBe("name");
    }

    [Theory]
    [InlineData(0, "try")]
    [InlineData(1, "confirm")]
    [InlineData(2, "cancel")]
    public void Tcc_BlankUrl_ThrowsNamingTheOperation(int blank, string param)
    {
        var urls = new[] { "http://p/t", "http://p/c", "http://p/x" };
        urls[blank] = " ";

        Should.Throw<ArgumentException>(() => new TccBuilder("g").Branch("a", urls[0], urls[1], urls[2])).ParamName.ShouldBe(param);
    }

    [Theory]
    [InlineData(0, "prepare")]
    [InlineData(1, "commit")]
    [InlineData(2, "rollback")]
    public void TwoPhaseCommit_EmptyOrNullUrl_ThrowsNamingTheOperation(int blank, string param)
    {
        var urls = new[] { "http://p/p", "http://p/c", "http://p/r" };
        urls[blank] = "";
        Should.Throw<ArgumentException>(() => new TwoPhaseCommitBuilder("g").Branch("a", urls[0], urls[1], urls[2])).ParamName.ShouldBe(param);

        urls[blank] = null!;
        Should.Throw<ArgumentException>(() => new TwoPhaseCommitBuilder("g").Branch("a", urls[0], urls[1], urls[2])).ParamName.ShouldBe(param);
    }

    [Theory]
    [InlineData(0, "canCommit")]
    [InlineData(1, "preCommit")]
    [InlineData(2, "doCommit")]
    [InlineData(3, "abort")]
    public void ThreePhaseCommit_NullUri_ThrowsNamingTheOperation(int missing, string param)
    {
        var uris = new Uri?[] { new("http://p/1"), new("http://p/2"), new("http://p/3"), new("http://p/4") };
        uris[missing] = null;

        Should.Throw<ArgumentException>(() => new ThreePhaseCommitBuilder("g").Branch("a", uris[0]!, uris[1]!, uris[2]!, uris[3]!))
            .ParamName.ShouldBe(param);
    }

    [Fact]
    public void Message_BlankActionOrQueryPrepared_ThrowsNamingIt()
    {
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").Branch("a", " ")).ParamName.ShouldBe("action");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").Branch("a", (Uri)null!)).ParamName.ShouldBe("action");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").WithQueryPrepared("")).ParamName.ShouldBe("url");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").WithQueryPrepared((Uri)null!)).ParamName.ShouldBe("url");
    }

    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    public void Branch_BlankName_ThrowsNamingName(string name)
    {
        Should.Throw<ArgumentException>(() => new TccBuilder("g").Branch(name, "http://p/t", "http://p/c", "http://p/x")).ParamName.ShouldBe("name");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").Branch(name, "http://p/a")).ParamName.ShouldBe("name");
    }

    [Fact]
    public void Branch_NonPositiveTimeout_ThrowsNamingTimeout()
    {
        Should.Throw<ArgumentException>(() => new TwoPhaseCommitBuilder("g").Branch("a", "http://1", "http://2", "http://3", timeout: TimeSpan.Zero))
            .ParamName.ShouldBe("timeout");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").Branch("a", "http://1").WithTimeout(TimeSpan.FromSeconds(-1)))
            .ParamName.ShouldBe("timeout");
    }

    [Fact]
    public void WithRetry_OnEveryBuilder_ValidatesLikeTheSaga()
    {
        Should.Throw<ArgumentException>(() => new TccBuilder("g").WithRetry(0, TimeSpan.Zero, TimeSpan.Zero)).ParamName.ShouldBe("maxAttempts");
        Should.Throw<ArgumentException>(() => new ThreePhaseCommitBuilder("g").WithRetry(2, TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(1)))
            .ParamName.ShouldBe("maxDelay");
        Should.Throw<ArgumentException>(() => new MessageBuilder("g").WithPayload(new Order("o", 1m), null!)).ParamName.ShouldBe("typeInfo");
    }

    [Fact]
    public void Message_PayloadFromTypedObject_IsSerializedWithTheTypeInfo()
    {
        var request = new MessageBuilder("g").Branch("a", "http://p/a").WithPayload(new Order("o-3", 7m), OrderJsonContext.Default.Order).Build();

        request.Payload.ShouldNotBeNull().GetProperty("orderId").GetString().ShouldBe("o-3");
    }
}
