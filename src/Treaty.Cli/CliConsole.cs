using System.CommandLine;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace Treaty.Cli;

/// <summary>
/// The one place every command gets its output from: standard output for results, standard error
/// for errors, both following the same rules.
/// </summary>
/// <remarks>
/// Rules (docs/decisions.md): colour and other escape sequences only on a terminal and only when
/// <c>NO_COLOR</c> is unset or empty and <c>TERM</c> is not <c>dumb</c>; redirected to a file or a
/// pipe, lines are laid out <see cref="RedirectedWidth"/> columns wide so that no word and no id is
/// ever split across lines; exit codes: 0 done, 1 the operation failed (the coordinator refused or
/// could not be reached), 2 a usage error.
/// </remarks>
internal static class CliConsole
{
    /// <summary>The operation failed: the coordinator answered with an error or could not be reached.</summary>
    public const int Failure = 1;

    /// <summary>The command line was wrong (unknown option, missing argument, invalid value).</summary>
    public const int UsageError = 2;

    /// <summary>
    /// Layout width when the output is not a terminal: a file or a pipe has no width, and anything
    /// narrower would wrap table cells mid-word (the 80 columns Spectre assumes split gids).
    /// </summary>
    public const int RedirectedWidth = 4096;

    /// <summary>Parses and runs <paramref name="args"/>; a usage error exits with <see cref="UsageError"/>.</summary>
    /// <param name="root">The command tree.</param>
    /// <param name="args">The command line.</param>
    /// <param name="configuration">Where output and errors go (tests pass their own writers); null for the process's.</param>
    /// <param name="cancellationToken">Cancels the command.</param>
    public static async Task<int> RunAsync(RootCommand root, string[] args, InvocationConfiguration? configuration = null, CancellationToken cancellationToken = default)
    {
        var parse = root.Parse(args);
        var exit = await parse.InvokeAsync(configuration ?? new InvocationConfiguration(), cancellationToken);
        return parse.Errors.Count > 0 ? UsageError : exit;
    }

    /// <summary>The console for a command's results (standard output, or the writer the invocation was given).</summary>
    public static IAnsiConsole Out(ParseResult parse)
    {
        var writer = parse.InvocationConfiguration.Output;
        return Create(writer, Decide(IsTerminal(writer), Variable("NO_COLOR"), Variable("TERM")));
    }

    /// <summary>The console for errors (standard error, or the writer the invocation was given).</summary>
    public static IAnsiConsole Error(ParseResult parse)
    {
        var writer = parse.InvocationConfiguration.Error;
        return Create(writer, Decide(IsTerminal(writer), Variable("NO_COLOR"), Variable("TERM")));
    }

    /// <summary>What a console may do, decided from where it writes and the environment.</summary>
    /// <param name="isTerminal">The writer is the process's own stdout/stderr and that is not redirected.</param>
    /// <param name="noColor">The value of <c>NO_COLOR</c> (https://no-color.org: set and not empty disables colour).</param>
    /// <param name="term">The value of <c>TERM</c>.</param>
    internal static ConsoleRules Decide(bool isTerminal, string? noColor, string? term) => new(
        Escapes: isTerminal && string.IsNullOrEmpty(noColor) && !string.Equals(term, "dumb", StringComparison.Ordinal),
        Terminal: isTerminal);

    /// <summary>A console writing to <paramref name="writer"/> under <paramref name="rules"/>.</summary>
    internal static IAnsiConsole Create(TextWriter writer, ConsoleRules rules)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = rules.Escapes ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = rules.Escapes ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = rules.Terminal ? InteractionSupport.Detect : InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
        });
        if (!rules.Terminal)
        {
            console.Profile.Width = RedirectedWidth;
        }

        return console;
    }

    /// <summary>Writes <paramref name="json"/> indented, followed by a new line (<c>--output json</c>).</summary>
    internal static void WriteJson(TextWriter writer, JsonNode json)
    {
        writer.WriteLine(json.ToJsonString(JsonOutput));
        writer.Flush();
    }

    // Relaxed escaping: the output is read by people and by JSON parsers, never embedded in HTML;
    // "<" and non-ASCII characters in a gid or an error stay as they are.
    private static readonly JsonSerializerOptions JsonOutput = new()
    {
        WriteIndented = true,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private static bool IsTerminal(TextWriter writer) =>
        ReferenceEquals(writer, Console.Out) ? !Console.IsOutputRedirected
        : ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected;

    private static string? Variable(string name) => Environment.GetEnvironmentVariable(name);
}

/// <summary>What a console may do.</summary>
/// <param name="Escapes">Colour and other ANSI escape sequences.</param>
/// <param name="Terminal">Writes to a terminal: its width, and spinners; otherwise <see cref="CliConsole.RedirectedWidth"/>.</param>
internal readonly record struct ConsoleRules(bool Escapes, bool Terminal);

/// <summary>The <c>--output</c> option of the commands that print API objects.</summary>
internal static class OutputFormat
{
    public const string Text = "text";
    public const string Json = "json";

    public static Option<string> CreateOption()
    {
        var option = new Option<string>("--output", "-o")
        {
            Description = "text (tables for people) or json (the API's JSON, for scripts)",
            DefaultValueFactory = _ => Text,
            Recursive = true,
        };
        option.AcceptOnlyFromAmong(Text, Json);
        return option;
    }
}

/// <summary>Paths the user types are relative to the directory they typed them in.</summary>
internal static class UserPath
{
    /// <summary>
    /// <paramref name="path"/> made absolute against <see cref="Environment.CurrentDirectory"/>,
    /// before anything (a child process, a host with its own content root) can read it elsewhere.
    /// </summary>
    public static string Resolve(string path) => Path.GetFullPath(path, Environment.CurrentDirectory);
}
