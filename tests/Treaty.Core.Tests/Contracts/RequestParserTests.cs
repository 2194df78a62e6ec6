using System.Text.Json;
using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;

namespace Treaty.Core.Tests.Contracts;

public sealed class RequestParserTests
{
    private static readonly SagaMachine Saga = new();

    private static ParsedRequest Parse(SubmitTransactionRequest request) =>
        RequestParser.Parse(request, p => p == Protocol.Saga ? Saga : null, () => "generated-gid");

    private static SubmitTransactionRequest Request(Action<SubmitTransactionRequest>? change = null)
    {
        var request = new SubmitTransactionRequest
        {
            Gid = "order-42",
            Protocol = "saga",
            Payload = JsonDocument.Parse("""{"customer":"alice","amount":25}""").RootElement.Clone(),
            Branches =
            [
                new BranchRequest { Name = "order", Action = "http://order.test/create", Compensate = "http://order.test/cancel" },
                new BranchRequest { Name = "payment", Action = "https://pay.test/reserve", Compensate = "https://pay.test/refund" },
            ],
        };
        change?.Invoke(request);
        return request;
    }

    private static IReadOnlyList<ValidationError> Errors(Action<SubmitTransactionRequest> change)
    {
        var parsed = Parse(Request(change));
        parsed.IsValid.ShouldBeFalse();
        parsed.Fingerprint.ShouldBeNull();
        return parsed.Errors;
    }

    [Fact]
    public void Parse_ValidSaga_BuildsSequentialSpecWithFingerprint()
    {
        var parsed = Parse(Request());

        parsed.IsValid.ShouldBeTrue();
        parsed.Errors.ShouldBeEmpty();
        var spec = parsed.Spec.ShouldNotBeNull();
        spec.Gid.ShouldBe("order-42");
        spec.Protocol.ShouldBe(Protocol.Saga);
        spec.PayloadJson.ShouldBe("""{"customer":"alice","amount":25}""");
        spec.Branches[0].DependsOn.ShouldBeEmpty();
        spec.Branches[1].DependsOn.ShouldBe(["order"]);
        spec.Branches[1].UrlOf("compensate").ShouldBe("https://pay.test/refund");
        parsed.Fingerprint.ShouldNotBeNullOrEmpty();
    }

    [Fact]
    public void Parse_TwoTransactionsNamingOneEndpoint_ShareOneUrlString()
    {
        // Fresh strings, as two request bodies would give them.
        var url = string.Concat("http://pool.test/", "reserve-", Guid.NewGuid().ToString("N"));
        var first = Parse(Request(r => r.Branches![0]!.Action = new string(url.AsSpan()))).Spec!;
        var second = Parse(Request(r => r.Branches![0]!.Action = new string(url.AsSpan()))).Spec!;

        first.Branches[0].UrlOf("action").ShouldBe(url);
        ReferenceEquals(first.Branches[0].UrlOf("action"), second.Branches[0].UrlOf("action")).ShouldBeTrue();
    }

    [Fact]
    public void UrlPool_PastItsCapacity_KeepsAUrlAsGiven()
    {
        for (var i = 0; i <= UrlPool.Capacity; i++)
        {
            UrlPool.Intern($"http://fill.test/{i}");
        }

        var url = new string($"http://over.test/{Guid.NewGuid():N}".AsSpan());
        ReferenceEquals(UrlPool.Intern(url), url).ShouldBeTrue();
        UrlPool.Intern(new string(url.AsSpan())).ShouldBe(url);
    }

    [Fact]
    public void Parse_NoGid_UsesAGeneratedOne() =>
        Parse(Request(r => r.Gid = null)).Spec.ShouldNotBeNull().Gid.ShouldBe("generated-gid");

    [Fact]
    public void Parse_EmptyDependsOn_RunsInParallel()
    {
        var spec = Parse(Request(r => r.Branches![1]!.DependsOn = [])).Spec.ShouldNotBeNull();

        spec.Branches[1].DependsOn.ShouldBeEmpty();
    }

    [Theory]
    [InlineData("has space")]
    [InlineData("")]
    [InlineData("slash/inside")]
    [InlineData("ünïcode")]
    public void Parse_BadGid_NamesTheGidField(string gid) =>
        Errors(r => r.Gid = gid).ShouldContain(e => e.Field == "gid");

    [Fact]
    public void Parse_GidTooLong_NamesTheGidField() =>
        Errors(r => r.Gid = new string('a', TreatyDefaults.MaxGidLength + 1)).ShouldContain(e => e.Field == "gid");

    [Fact]
    public void Parse_UnknownProtocol_NamesTheProtocolFieldAndFlagsUnsupported()
    {
        var parsed = Parse(Request(r => r.Protocol = "xa"));

        parsed.UnsupportedProtocol.ShouldBeTrue();
        parsed.Errors.ShouldHaveSingleItem().Field.ShouldBe("protocol");
    }

    [Fact]
    public void Parse_ProtocolNotRegistered_IsUnsupported()
    {
        var parsed = Parse(Request(r => r.Protocol = "tcc"));

        parsed.UnsupportedProtocol.ShouldBeTrue();
        parsed.Errors.ShouldContain(e => e.Field == "protocol");
    }

    [Fact]
    public void Parse_MissingProtocol_NamesTheProtocolField()
    {
        var parsed = Parse(Request(r => r.Protocol = null));

        parsed.UnsupportedProtocol.ShouldBeFalse();
        parsed.Errors.ShouldContain(e => e.Field == "protocol");
    }

    [Fact]
    public void Parse_MissingActionUrl_NamesTheActionField() =>
        Errors(r => r.Branches![1]!.Action = null).ShouldHaveSingleItem().Field.ShouldBe("branches[1].action");

    [Theory]
    [InlineData("ftp://pay.test/reserve")]
    [InlineData("file:///etc/passwd")]
    [InlineData("/relative/path")]
    [InlineData("not a url")]
    public void Parse_NonHttpUrl_NamesTheOperationField(string url) =>
        Errors(r => r.Branches![0]!.Compensate = url).ShouldContain(e => e.Field == "branches[0].compensate");

    [Fact]
    public void Parse_OperationOfAnotherProtocol_NamesIt() =>
        Errors(r => r.Branches![0]!.Try = "http://order.test/try").ShouldContain(e => e.Field == "branches[0].try");

    [Fact]
    public void Parse_DuplicateBranchNames_NamesTheSecond() =>
        Errors(r => r.Branches![1]!.Name = "order").ShouldContain(e => e.Field == "branches[1].name");

    [Fact]
    public void Parse_BadBranchName_NamesIt() =>
        Errors(r => r.Branches![0]!.Name = "a/b").ShouldContain(e => e.Field == "branches[0].name");

    [Fact]
    public void Parse_NoBranches_NamesTheBranchesField() =>
        Errors(r => r.Branches = []).ShouldContain(e => e.Field == "branches");

    [Fact]
    public void Parse_NullBranch_NamesIt() =>
        Errors(r => r.Branches![1] = null).ShouldContain(e => e.Field == "branches[1]");

    [Fact]
    public void Parse_UnknownDependency_NamesTheDependsOnField() =>
        Errors(r => r.Branches![1]!.DependsOn = ["warehouse"]).ShouldContain(e => e.Field == "branches[1].dependsOn");

    [Fact]
    public void Parse_DependsOnItself_NamesTheDependsOnField() =>
        Errors(r => r.Branches![1]!.DependsOn = ["payment"]).ShouldContain(e => e.Field == "branches[1].dependsOn");

    [Fact]
    public void Parse_DependencyCycle_NamesADependsOnField()
    {
        var errors = Errors(r =>
        {
            r.Branches![0]!.DependsOn = ["payment"];
            r.Branches![1]!.DependsOn = ["order"];
        });

        errors.ShouldHaveSingleItem().Field.ShouldBeOneOf("branches[0].dependsOn", "branches[1].dependsOn");
        errors[0].Message.ShouldContain("cycle");
    }

    [Fact]
    public void Parse_RetryWithZeroAttempts_NamesMaxAttempts() =>
        Errors(r => r.Retry = new RetryPolicyRequest { MaxAttempts = 0 }).ShouldContain(e => e.Field == "retry.maxAttempts");

    [Fact]
    public void Parse_RetryWithTooManyAttempts_NamesMaxAttempts() =>
        Errors(r => r.Retry = new RetryPolicyRequest { MaxAttempts = TreatyDefaults.MaxRetryAttempts + 1 }).ShouldContain(e => e.Field == "retry.maxAttempts");

    [Fact]
    public void Parse_BranchRetryWithNegativeDelay_NamesTheBranchField() =>
        Errors(r => r.Branches![0]!.Retry = new RetryPolicyRequest { InitialDelayMs = -1 })
            .ShouldContain(e => e.Field == "branches[0].retry.initialDelayMs");

    [Fact]
    public void Parse_RetryCapBelowInitialDelay_NamesMaxDelay() =>
        Errors(r => r.Retry = new RetryPolicyRequest { InitialDelayMs = 500, MaxDelayMs = 100 }).ShouldContain(e => e.Field == "retry.maxDelayMs");

    [Theory]
    [InlineData(0L)]
    [InlineData(-5L)]
    [InlineData(TreatyDefaults.MaxTimeoutMs + 1)]
    public void Parse_BadTimeout_NamesTheTimeoutField(long timeout)
    {
        Errors(r => r.TimeoutMs = timeout).ShouldContain(e => e.Field == "timeoutMs");
        Errors(r => r.Branches![1]!.TimeoutMs = timeout).ShouldContain(e => e.Field == "branches[1].timeoutMs");
    }

    [Fact]
    public void Parse_SagaValidationErrors_AreReported() =>
        Errors(r => r.Branches![0]!.Compensate = null).ShouldHaveSingleItem().Field.ShouldBe("branches[0].compensate");

    [Fact]
    public void Parse_SeveralBadFields_NamesEachOfThem()
    {
        var errors = Errors(r =>
        {
            r.Gid = "bad gid";
            r.TimeoutMs = -1;
            r.Branches![1]!.Action = "ftp://x";
        });

        errors.Select(e => e.Field).ShouldBe(["gid", "timeoutMs", "branches[1].action"], ignoreOrder: true);
    }

    [Fact]
    public void Parse_FromJson_RejectsUnknownMembers() =>
        Should.Throw<JsonException>(() => JsonSerializer.Deserialize(
            """{"gid":"x","protocol":"saga","branches":[],"bogus":1}""", TreatyJsonContext.Default.SubmitTransactionRequest));

    [Fact]
    public void Fingerprint_EqualRequests_AreEqual()
    {
        var a = Parse(Request()).Fingerprint;
        var b = Parse(Request()).Fingerprint;

        a.ShouldNotBeNull();
        b.ShouldBe(a);
        RequestParser.Fingerprint(Parse(Request()).Spec!).ShouldBe(a);
    }

    public static TheoryData<string> Changes => new() { "gid", "payload", "url", "dependsOn", "pivot", "retry", "timeout", "branchTimeout", "order" };

    [Theory]
    [MemberData(nameof(Changes))]
    public void Fingerprint_DifferentRequests_Differ(string change)
    {
        var original = Parse(Request()).Fingerprint;

        var changed = Parse(Request(r =>
        {
            switch (change)
            {
                case "gid": r.Gid = "order-43"; break;
                case "payload": r.Payload = JsonDocument.Parse("""{"customer":"alice","amount":26}""").RootElement.Clone(); break;
                case "url": r.Branches![1]!.Action = "https://pay.test/reserve2"; break;
                case "dependsOn": r.Branches![1]!.DependsOn = []; break;
                case "pivot": r.Branches![1]!.Pivot = true; break;
                case "retry": r.Retry = new RetryPolicyRequest { MaxAttempts = 2 }; break;
                case "timeout": r.TimeoutMs = 60_000; break;
                case "branchTimeout": r.Branches![0]!.TimeoutMs = 1_000; break;
                case "order":
                    r.Branches!.Reverse();
                    r.Branches[0]!.DependsOn = [];
                    r.Branches[1]!.DependsOn = ["payment"];
                    break;
            }
        }));

        changed.IsValid.ShouldBeTrue(string.Join("; ", changed.Errors.Select(e => $"{e.Field}: {e.Message}")));
        changed.Fingerprint.ShouldNotBe(original);
    }
}
